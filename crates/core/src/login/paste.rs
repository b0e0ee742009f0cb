//! Reading what the user pastes back after signing in (`CODE#STATE`, a bare code, or a whole
//! callback URL) and checking its `state` against ours before anything is sent.

use std::fmt;

use crate::secret::Secret;
use crate::settings::Url;

/// What the user pasted: the code, and the state when the paste carried one.
#[derive(Debug, PartialEq, Eq)]
pub struct Pasted {
    pub code: Secret,
    pub state: Option<String>,
}

/// Why a paste was refused. Never echoes the paste (it holds a code).
#[derive(Debug, PartialEq, Eq)]
pub enum PasteError {
    Empty,
    NoCode,
    StateMismatch,
}

impl fmt::Display for PasteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PasteError::Empty => "nothing was pasted; run `claude-tokend login` again and paste the code the page shows",
            PasteError::NoCode => "the pasted text has no authorization code; paste the code the page shows (CODE#STATE)",
            PasteError::StateMismatch => {
                "the pasted code belongs to a different login attempt (its state does not match this one); \
                 nothing was sent. Run `claude-tokend login` again and use the URL it prints"
            }
        })
    }
}

impl std::error::Error for PasteError {}

/// Reads `CODE#STATE`, `CODE`, or a whole callback URL (`…?code=…&state=…`), with any
/// surrounding whitespace.
pub fn parse_paste(input: &str) -> Result<Pasted, PasteError> {
    let text = input.trim();
    if text.is_empty() {
        return Err(PasteError::Empty);
    }
    if text.contains("://") || text.starts_with('?') || text.contains("code=") {
        let query_url = if text.contains("://") {
            Url::parse(text).ok()
        } else {
            Url::parse(&format!("http://x/?{}", text.trim_start_matches('?'))).ok()
        };
        if let Some(url) = query_url {
            let mut code = None;
            let mut state = None;
            // The code may also come in the fragment (`#code=…`) on some callback pages.
            let fragment_pairs = url
                .fragment()
                .map(|f| {
                    url::form_urlencoded::parse(f.as_bytes())
                        .into_owned()
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default();
            for (k, v) in url.query_pairs().into_owned().chain(fragment_pairs) {
                match k.as_str() {
                    "code" if code.is_none() => code = Some(v),
                    "state" if state.is_none() => state = Some(v),
                    _ => {}
                }
            }
            // `…?code=CODE#STATE`: a bare fragment is the state, as in a `CODE#STATE` paste.
            if state.is_none()
                && let Some(f) = url.fragment().filter(|f| !f.is_empty() && !f.contains('='))
            {
                state = Some(f.to_owned());
            }
            let code = code.map(|c| c.trim().to_owned()).filter(|c| !c.is_empty());
            return match code {
                Some(code) => {
                    // A code of the form CODE#STATE inside the query is split as a paste would be.
                    let (code, inner_state) = split_hash(&code);
                    Ok(Pasted {
                        code: Secret::new(code),
                        state: state.or(inner_state).filter(|s| !s.is_empty()),
                    })
                }
                None => Err(PasteError::NoCode),
            };
        }
    }
    let (code, state) = split_hash(text);
    if code.is_empty() {
        return Err(PasteError::NoCode);
    }
    Ok(Pasted {
        code: Secret::new(code),
        state,
    })
}

fn split_hash(text: &str) -> (String, Option<String>) {
    match text.split_once('#') {
        Some((c, s)) => (
            c.trim().to_owned(),
            Some(s.trim().to_owned()).filter(|s| !s.is_empty()),
        ),
        None => (text.trim().to_owned(), None),
    }
}

/// Checks a pasted state against ours. A paste without one is accepted (some pages show only
/// the code); a different one is refused before anything is sent.
pub fn check_state(pasted: &Pasted, ours: &str) -> Result<(), PasteError> {
    match &pasted.state {
        Some(s) if s != ours => Err(PasteError::StateMismatch),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn pastes_by_table() {
        let ok = |code: &str, state: Option<&str>| {
            Ok(Pasted {
                code: Secret::new(code),
                state: state.map(str::to_owned),
            })
        };
        let cases = [
            ("abc#xyz", ok("abc", Some("xyz"))),
            ("  abc#xyz \n", ok("abc", Some("xyz"))),
            ("abc", ok("abc", None)),
            ("abc#", ok("abc", None)),
            (
                "https://platform.claude.com/oauth/code/callback?code=abc&state=xyz",
                ok("abc", Some("xyz")),
            ),
            (
                "http://localhost:5/callback?state=xyz&code=a%2Bb",
                ok("a+b", Some("xyz")),
            ),
            (
                "https://x.example/cb#code=abc&state=xyz",
                ok("abc", Some("xyz")),
            ),
            ("?code=abc&state=xyz", ok("abc", Some("xyz"))),
            ("code=abc#xyz", ok("abc", Some("xyz"))),
            ("", Err(PasteError::Empty)),
            ("   ", Err(PasteError::Empty)),
            ("#xyz", Err(PasteError::NoCode)),
            ("https://x.example/cb?state=xyz", Err(PasteError::NoCode)),
        ];
        for (input, want) in cases {
            assert_eq!(parse_paste(input), want, "paste {input:?}");
        }
    }

    #[test]
    fn state_check() {
        let p = parse_paste("abc#theirs").unwrap();
        assert_eq!(check_state(&p, "ours"), Err(PasteError::StateMismatch));
        assert_eq!(check_state(&p, "theirs"), Ok(()));
        assert_eq!(check_state(&parse_paste("abc").unwrap(), "ours"), Ok(()));
        assert!(!PasteError::StateMismatch.to_string().contains("theirs"));
    }

    proptest! {
        #[test]
        fn paste_never_panics(s in ".{0,80}") {
            let _ = parse_paste(&s);
        }

        #[test]
        fn code_hash_state_round_trips(code in "[A-Za-z0-9_-]{1,40}", state in "[A-Za-z0-9_-]{1,40}") {
            let p = parse_paste(&format!("{code}#{state}")).unwrap();
            prop_assert_eq!(p.code.expose(), code.as_str());
            prop_assert_eq!(p.state.as_deref(), Some(state.as_str()));
        }
    }
}
