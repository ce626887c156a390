//! Phone numbers, the key users are stored under.

use std::fmt;

/// An E.164 phone number such as `+14155550100`. It can only be built from valid text.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct E164(String);

impl E164 {
    /// Parses a Twilio address: `+14155550100`, or one with a channel prefix such as
    /// `whatsapp:+14155550100`, whose prefix is dropped so the same person is one user on every channel.
    pub fn parse_address(address: &str) -> Option<Self> {
        let address = address.trim();
        let number = match address.split_once(':') {
            Some((channel, rest)) if !channel.is_empty() && channel.chars().all(|c| c.is_ascii_alphabetic()) => rest,
            Some(_) => return None,
            None => address,
        };
        let digits = number.strip_prefix('+')?;
        let valid =
            (7..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()) && !digits.starts_with('0');
        valid.then(|| E164(number.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for E164 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::E164;

    #[test]
    fn a_channel_prefix_is_stripped() {
        assert_eq!(E164::parse_address("whatsapp:+14155550100").unwrap().as_str(), "+14155550100");
        assert_eq!(E164::parse_address("+447700900123").unwrap().as_str(), "+447700900123");
    }

    #[test]
    fn anything_but_an_e164_number_is_refused() {
        for bad in [
            "",
            "14155550100",
            "+0123456789",
            "+141555",
            "+1234567890123456",
            "alice",
            "whatsapp:alice",
            "+1 415 555 0100",
            "messenger:123456789",
            "1:+14155550100",
        ] {
            assert_eq!(E164::parse_address(bad), None, "{bad}");
        }
    }
}
