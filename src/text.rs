//! Text from outside (a client, an upstream, an operator), cut short for an error message or a log
//! line. The lowest floor: everything may use it, and it uses nothing of the crate.

/// At most `max_chars` characters of `text`. Each caller says its own limit.
pub(crate) fn clip(text: &str, max_chars: usize) -> &str {
    text.char_indices().nth(max_chars).map_or(text, |(end, _)| &text[..end])
}

/// At most `max_chars` characters of `bytes` read as UTF-8 (anything else replaced), with `…`
/// where something was cut: for a body an upstream answered.
pub(crate) fn snippet(bytes: &[u8], max_chars: usize) -> String {
    // Never more than four bytes a character are needed to make `max_chars` of them.
    let head = String::from_utf8_lossy(&bytes[..bytes.len().min(max_chars.saturating_mul(4))]);
    let clipped = clip(&head, max_chars);
    if clipped.len() < bytes.len() {
        format!("{clipped}…")
    } else {
        clipped.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_counts_characters_not_bytes() {
        assert_eq!(clip("héllo", 2), "hé");
        assert_eq!(clip("hi", 10), "hi");
    }

    #[test]
    fn a_snippet_says_where_it_was_cut() {
        assert_eq!(snippet(b"short", 10), "short");
        assert_eq!(snippet("ééééé".as_bytes(), 2), "éé…");
        assert_eq!(snippet(&[b'a'; 100_000], 3), "aaa…");
    }
}
