//! Character checks shared by every string a user shows to others: chat text, user ids and
//! display names. One predicate per class of character, so chat text and names cannot drift
//! apart; this module only classifies and checks, it never rewrites a string.

/// Longest display name, in characters (a token's `name` claim, `/dev/token`, the server API).
pub const NAME_MAX_CHARS: usize = 32;

/// Direction overrides and isolates (U+202A–U+202E, U+2066–U+2069): they let one string reorder
/// how the text around it renders.
pub fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Zero-width characters (U+200B–U+200D, U+2060, U+FEFF): invisible, so two different ids or
/// names could look the same. Chat text keeps them (the joiner U+200D builds emoji sequences).
pub fn is_zero_width(c: char) -> bool {
    matches!(c, '\u{200B}'..='\u{200D}' | '\u{2060}' | '\u{FEFF}')
}

/// Why `c` is refused in a user id or display name, or `None` if it is allowed: control
/// characters, direction overrides and isolates, zero-width characters.
pub fn refused_in_name(c: char) -> Option<&'static str> {
    if c.is_control() {
        Some("control character")
    } else if is_bidi_control(c) {
        Some("direction-override character")
    } else if is_zero_width(c) {
        Some("zero-width character")
    } else {
        None
    }
}

/// Checks a display name: trimmed, 1–[`NAME_MAX_CHARS`] characters, none that
/// [`refused_in_name`] refuses. Returns the trimmed name.
pub fn check_name(name: &str) -> Result<&str, String> {
    let name = name.trim();
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.chars().count() > NAME_MAX_CHARS {
        return Err(format!("at most {NAME_MAX_CHARS} characters"));
    }
    if let Some((c, what)) = name
        .chars()
        .find_map(|c| refused_in_name(c).map(|w| (c, w)))
    {
        return Err(format!("contains the {what} U+{:04X}", c as u32));
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        for c in ['\u{202A}', '\u{202E}', '\u{2066}', '\u{2069}'] {
            assert!(is_bidi_control(c), "{c:?}");
            assert_eq!(refused_in_name(c), Some("direction-override character"));
        }
        for c in ['\u{200B}', '\u{200C}', '\u{200D}', '\u{2060}', '\u{FEFF}'] {
            assert!(is_zero_width(c), "{c:?}");
            assert_eq!(refused_in_name(c), Some("zero-width character"));
        }
        assert_eq!(refused_in_name('\u{7}'), Some("control character"));
        for c in ['a', 'é', '世', '👋', '\u{2065}', '\u{200E}', '\u{206A}'] {
            assert!(!is_bidi_control(c) && !is_zero_width(c), "{c:?}");
        }
    }

    #[test]
    fn names() {
        assert_eq!(check_name("  Alice  "), Ok("Alice"));
        assert_eq!(check_name("Алиса 👋"), Ok("Алиса 👋"));
        assert_eq!(
            check_name(&"x".repeat(NAME_MAX_CHARS)).map(str::len),
            Ok(32)
        );
        assert!(check_name("  ").unwrap_err().contains("empty"));
        assert!(
            check_name(&"x".repeat(33))
                .unwrap_err()
                .contains("at most 32")
        );
        assert!(
            check_name("a\u{7}")
                .unwrap_err()
                .contains("control character U+0007")
        );
        assert!(
            check_name("evil\u{202E}gnp.exe")
                .unwrap_err()
                .contains("direction-override character U+202E")
        );
        assert!(
            check_name("ad\u{200B}min")
                .unwrap_err()
                .contains("zero-width character U+200B")
        );
        assert!(check_name("\u{FEFF}x").unwrap_err().contains("U+FEFF"));
    }
}
