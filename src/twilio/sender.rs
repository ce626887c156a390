//! Who sent a message: every address it carries for its sender. A person can write as a phone
//! number, a WhatsApp business-scoped user id (BSUID, which WhatsApp sends instead of the phone for
//! users with a username since mid-2026), a parent BSUID (one person across a business portfolio),
//! or a Conversations chat identity; the database resolves these to one user.

use crate::phone::E164;

/// A WhatsApp business-scoped user id, such as `US.13491208655302741918`, or a parent id,
/// `US.ENT.…`: two capital letters (a country), a dot, then up to 128 letters and digits (after
/// `ENT.` for a parent). It can only be built from valid text.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Bsuid(String);

const MAX_BSUID_ID: usize = 128;

impl Bsuid {
    /// A BSUID as Twilio writes it, with or without the `whatsapp:` prefix.
    pub fn parse(address: &str) -> Option<Self> {
        let id = address.strip_prefix("whatsapp:").unwrap_or(address);
        let (country, rest) = id.split_once('.')?;
        let rest = rest.strip_prefix("ENT.").unwrap_or(rest);
        let valid = country.len() == 2
            && country.bytes().all(|b| b.is_ascii_uppercase())
            && (1..=MAX_BSUID_ID).contains(&rest.len())
            && rest.bytes().all(|b| b.is_ascii_alphanumeric());
        valid.then(|| Bsuid(id.to_owned()))
    }

    /// A parent id (`US.ENT.…`) rather than a business-scoped one.
    pub fn is_parent(&self) -> bool {
        self.0.get(2..7) == Some(".ENT.")
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Every address one message carries for its sender. At least one is set, except for a
/// Conversations `system` message, which has no sender ([`Sender::system`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sender {
    phone: Option<E164>,
    bsuid: Option<Bsuid>,
    parent: Option<Bsuid>,
    chat: Option<String>,
}

impl Sender {
    pub fn phone(phone: E164) -> Self {
        Sender { phone: Some(phone), ..Sender::default() }
    }

    pub fn bsuid(bsuid: Bsuid) -> Self {
        Sender { bsuid: Some(bsuid), ..Sender::default() }
    }

    /// A Conversations chat identity (`ada.lovelace`, an e-mail address), kept exactly.
    pub fn chat(identity: &str) -> Self {
        Sender { chat: Some(identity.to_owned()), ..Sender::default() }
    }

    /// A Conversations message from `system`: no person sent it.
    pub fn system() -> Self {
        Sender::default()
    }

    /// Adds a BSUID learnt beside the main address (`ExternalUserId`); the one the main address
    /// already is wins.
    pub fn with_bsuid(mut self, bsuid: Bsuid) -> Self {
        self.bsuid.get_or_insert(bsuid);
        self
    }

    /// Adds a parent BSUID (`ParentExternalUserId`).
    pub fn with_parent(mut self, parent: Bsuid) -> Self {
        self.parent = Some(parent);
        self
    }

    pub fn phone_number(&self) -> Option<&E164> {
        self.phone.as_ref()
    }

    pub fn business_id(&self) -> Option<&Bsuid> {
        self.bsuid.as_ref()
    }

    pub fn parent_id(&self) -> Option<&Bsuid> {
        self.parent.as_ref()
    }

    pub fn chat_identity(&self) -> Option<&str> {
        self.chat.as_deref()
    }

    /// Known by its phone alone: the database can key it by phone with nothing to link.
    pub fn is_phone_only(&self) -> bool {
        self.phone.is_some() && self.bsuid.is_none() && self.parent.is_none() && self.chat.is_none()
    }

    pub fn is_system(&self) -> bool {
        *self == Sender::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bsuid_is_a_country_a_dot_and_up_to_128_letters_and_digits() {
        let id = Bsuid::parse("whatsapp:US.13491208655302741918").unwrap();
        assert_eq!(id.as_str(), "US.13491208655302741918");
        assert!(!id.is_parent());
        assert!(Bsuid::parse("FI.278abcDEF").is_some());
        let parent = Bsuid::parse("whatsapp:US.ENT.9876").unwrap();
        assert!(parent.is_parent());
        assert!(Bsuid::parse(&format!("US.{}", "a".repeat(128))).is_some());
        for bad in [
            "",
            "US.",
            "us.123",
            "USA.123",
            "US123",
            "US.12 3",
            "US.12-3",
            "+14155550100",
            "whatsapp:+14155550100",
            "US.ENT.",
            &format!("US.{}", "a".repeat(129)),
        ] {
            assert_eq!(Bsuid::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_main_address_wins_over_one_learnt_beside_it() {
        let from = Bsuid::parse("US.1").unwrap();
        let sender = Sender::bsuid(from.clone()).with_bsuid(Bsuid::parse("US.2").unwrap());
        assert_eq!(sender.business_id(), Some(&from));
        assert!(Sender::system().is_system());
        assert!(Sender::phone(E164::parse_address("+14155550100").unwrap()).is_phone_only());
    }
}
