//! The one type that holds a token. It owns masking: `Debug` and `Display` print only a short,
//! recognisable form (`sk-ant-oat01-…x7Qa`), so a token cannot reach a log line, an error message
//! or a panic message by accident. The whole value is reachable only through [`Secret::expose`],
//! which the store (to write the file) and the token client (to send it) call, and nothing else.
//!
//! It also owns [`printable`], the one rule for putting text from a server or a file on a
//! terminal: a masked token goes through it, and so does every other such text the commands
//! print (an email, a plan, scopes, an error a server wrote).

use std::fmt;

/// A token (access or refresh). Compares in constant shape, never prints itself.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

/// How many trailing characters a masked token keeps: enough to tell two tokens apart in a log,
/// far too few to guess the rest.
const TAIL: usize = 4;
/// A token shorter than this shows no characters at all: four of eight would be half a secret.
const MIN_LEN_FOR_TAIL: usize = 16;

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The whole token, for the two places that must have it: the request body and the file.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Claude Code writes `""` after a failed refresh; an empty token means "logged out".
    pub fn is_blank(&self) -> bool {
        self.0.trim().is_empty()
    }

    /// The masked form: the token family prefix (`sk-ant-oat01-`) when the token has one, then
    /// `…` and the last four characters.
    pub fn masked(&self) -> String {
        mask(&self.0)
    }
}

/// Masks any string as a token would be masked. Public so that error texts built from
/// server responses can be scrubbed with the same rule.
pub fn mask(token: &str) -> String {
    if token.is_empty() {
        return "(empty)".to_owned();
    }
    let chars: Vec<char> = token.chars().collect();
    if chars.len() < MIN_LEN_FOR_TAIL {
        return "…".to_owned();
    }
    let prefix = family_prefix(token);
    // The prefix plus the tail must leave most of the token hidden.
    let prefix = if prefix.chars().count() + TAIL + 8 <= chars.len() {
        prefix
    } else {
        ""
    };
    let tail: String = chars[chars.len() - TAIL..].iter().collect();
    format!("{}…{}", printable(prefix), printable(&tail))
}

/// The text with control characters (an escape sequence a server planted in a token, a plan
/// or an email would otherwise reach the terminal and drive it) and the bidirectional marks
/// and overrides that reorder what a terminal shows written as escapes: `\u{1b}`, `\n`,
/// `\u{202e}`. For text from a server or a file, printed as text (JSON output is escaped by
/// its serializer instead).
pub fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            let reorders = matches!(c, '\u{61c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
            if c.is_control() || reorders {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// `sk-ant-oat01-` for `sk-ant-oat01-…`: the part of an Anthropic token that names its kind
/// and carries no secret. Anything else has no prefix worth showing.
fn family_prefix(token: &str) -> &str {
    if !token.starts_with("sk-ant-") {
        return "";
    }
    // sk-ant-<kind>- : the third hyphen ends the family name.
    match token.match_indices('-').nth(2) {
        Some((i, _)) if i <= 16 => &token[..=i],
        _ => "",
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({})", self.masked())
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn masks_by_table() {
        let cases = [
            ("", "(empty)"),
            ("short", "…"),
            (
                "sk-ant-oat01-abcdefghijklmnopqrstuvwxyz0123x7Qa",
                "sk-ant-oat01-…x7Qa",
            ),
            (
                "sk-ant-ort01-ZZZZZZZZZZZZZZZZZZZZZZZZZZZZabcd",
                "sk-ant-ort01-…abcd",
            ),
            ("plain-opaque-token-0123456789", "…6789"),
            // Too short for the prefix to be shown without revealing most of the token.
            ("sk-ant-oat01-abcdefgh", "…efgh"),
            // A server's control characters and bidi overrides are shown escaped, never sent
            // to the terminal.
            ("plain-opaque-token-012345\u{1b}[2J", "…\\u{1b}[2J"),
            ("plain-opaque-token-01234ab\n\r", "…ab\\n\\r"),
            ("plain-opaque-token-0123\u{202e}abc", "…\\u{202e}abc"),
        ];
        for (token, want) in cases {
            assert_eq!(mask(token), want, "mask({token:?})");
        }
    }

    #[test]
    fn printable_escapes_what_drives_a_terminal_and_keeps_the_rest() {
        let cases = [
            ("ada@example.test", "ada@example.test"),
            ("tökën ✓", "tökën ✓"),
            ("a\u{1b}[2Jb", "a\\u{1b}[2Jb"),
            ("line\nnext\ttab\u{7f}", "line\\nnext\\ttab\\u{7f}"),
            (
                "x\u{202e}y\u{2066}z\u{61c}",
                "x\\u{202e}y\\u{2066}z\\u{61c}",
            ),
            ("\u{200f}\u{9b}", "\\u{200f}\\u{9b}"),
        ];
        for (text, want) in cases {
            assert_eq!(printable(text), want, "{text:?}");
        }
    }

    #[test]
    fn debug_and_display_are_masked() {
        let s = Secret::new("sk-ant-oat01-SECRETSECRETSECRETSECRETwxyz");
        assert_eq!(format!("{s}"), "sk-ant-oat01-…wxyz");
        assert_eq!(format!("{s:?}"), "Secret(sk-ant-oat01-…wxyz)");
        assert!(!format!("{s:#?}").contains("SECRET"));
    }

    proptest! {
        /// Whatever the token, the masked form never contains it, and reveals at most the
        /// non-secret family prefix plus four characters.
        #[test]
        fn masked_never_contains_the_token(token in "[A-Za-z0-9_-]{8,120}") {
            let m = mask(&token);
            prop_assert!(!m.contains(&token));
            let revealed = m.replace('…', "");
            prop_assert!(revealed.chars().count() <= 17 + TAIL);
        }
    }
}
