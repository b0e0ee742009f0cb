//! The access-only document, as pure functions: what a mirror should hold for a source login
//! ([`want_from`]), the mirror file's next version keeping the consumer's own keys
//! ([`merged`]), and the one thing in a mirror that makes it someone's real login
//! ([`holds_refresh_token`]).

use serde_json::{Map, Value};

use crate::credentials::{Credentials, OAUTH_KEY};

/// The fields of `claudeAiOauth` a mirror carries: what Claude Code needs to use a login it
/// never refreshes (it needs `scopes`). Never `refreshToken`, `refreshTokenExpiresAt` or
/// `clientId`: nothing in a mirror may spend or describe the source's refresh-token family.
pub const CARRIED: [&str; 5] = [
    "accessToken",
    "expiresAt",
    "scopes",
    "subscriptionType",
    "rateLimitTier",
];

/// What a mirror should hold.
#[derive(Clone, Debug, PartialEq)]
pub enum Want {
    /// This `claudeAiOauth` (the carried fields present in the source, in the source's order).
    Login(Map<String, Value>),
    /// No `claudeAiOauth` at all: the source has no usable access token (a logout, tokens
    /// blanked after a refusal, the file gone).
    NoLogin,
}

impl Want {
    /// The document `--mirror-cmd` gets on stdin (`None` for a logout: empty stdin): the
    /// access-only login alone, none of the mirror file's other keys.
    pub fn document(&self) -> Option<Vec<u8>> {
        let Want::Login(oauth) = self else {
            return None;
        };
        let mut root = Map::new();
        root.insert(OAUTH_KEY.to_owned(), Value::Object(oauth.clone()));
        Some(to_bytes(&root))
    }
}

/// What a mirror of `source` should hold, or `None` when the source's login does not parse
/// (a malformed source says nothing about its token: the mirror is left as it is).
pub fn want_from(source: &Credentials) -> Option<Want> {
    match source.oauth().ok()? {
        Some(view) if !view.access_token.is_blank() => {}
        _ => return Some(Want::NoLogin),
    }
    let Some(Value::Object(oauth)) = source.root().get(OAUTH_KEY) else {
        return Some(Want::NoLogin);
    };
    let carried = oauth
        .iter()
        .filter(|(k, _)| CARRIED.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Some(Want::Login(carried))
}

/// Whether the mirror file's document already holds what `want` says.
pub fn holds(current: &Map<String, Value>, want: &Want) -> bool {
    match (current.get(OAUTH_KEY), want) {
        (Some(Value::Object(have)), Want::Login(want)) => have == want,
        (None, Want::NoLogin) => true,
        _ => false,
    }
}

/// The mirror file's next version: `current`'s keys (the consumer's own: an `mcpOAuth` of its
/// own, a setting) in their order, with `claudeAiOauth` replaced whole or removed.
pub fn merged(current: Option<&Map<String, Value>>, want: &Want) -> Map<String, Value> {
    let mut root = current.cloned().unwrap_or_default();
    match want {
        Want::Login(oauth) => match root.get_mut(OAUTH_KEY) {
            Some(slot) => *slot = Value::Object(oauth.clone()),
            None => {
                root.insert(OAUTH_KEY.to_owned(), Value::Object(oauth.clone()));
            }
        },
        Want::NoLogin => {
            root.shift_remove(OAUTH_KEY);
        }
    }
    root
}

/// A `claudeAiOauth` with a non-blank `refreshToken`: someone's real login, which a mirror
/// never overwrites.
pub fn holds_refresh_token(doc: &Map<String, Value>) -> bool {
    doc.get(OAUTH_KEY)
        .and_then(|o| o.get("refreshToken"))
        .and_then(Value::as_str)
        .is_some_and(|t| !t.trim().is_empty())
}

/// The bytes of a mirror document: pretty, with a final newline, like the source files.
pub fn to_bytes(root: &Map<String, Value>) -> Vec<u8> {
    let mut out = serde_json::to_vec_pretty(root).expect("a serde_json::Map always serializes");
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn creds(v: Value) -> Credentials {
        Credentials::parse(v.to_string().as_bytes()).unwrap()
    }

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    #[test]
    fn the_mirror_carries_only_the_access_fields() {
        let source = creds(json!({
            "claudeAiOauth": {
                "accessToken": "sk-ant-oat01-aaa", "refreshToken": "sk-ant-ort01-rrr",
                "expiresAt": 1_800_000_000_000_i64, "refreshTokenExpiresAt": 1_900_000_000_000_i64,
                "scopes": ["user:inference"], "subscriptionType": "max",
                "rateLimitTier": "default_claude_max_20x", "clientId": "c", "unknown": 1
            },
            "mcpOAuth": {"srv": {"accessToken": "mcp-secret"}},
            "other": true
        }));
        let Some(Want::Login(m)) = want_from(&source) else {
            panic!("a login")
        };
        let keys: Vec<_> = m.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "accessToken",
                "expiresAt",
                "scopes",
                "subscriptionType",
                "rateLimitTier"
            ]
        );
        let doc = String::from_utf8(Want::Login(m).document().unwrap()).unwrap();
        for secret in ["sk-ant-ort01-rrr", "mcp-secret", "other", "clientId"] {
            assert!(!doc.contains(secret), "{secret} leaked into {doc}");
        }
    }

    #[test]
    fn no_usable_access_token_means_no_login_by_table() {
        for source in [
            json!({}),
            json!({"claudeAiOauth": null}),
            json!({"claudeAiOauth": {"accessToken": "", "refreshToken": "", "expiresAt": 0}}),
            json!({"claudeAiOauth": {"accessToken": "  ", "refreshToken": "r", "expiresAt": 5}}),
            json!({"mcpOAuth": {}}),
        ] {
            assert_eq!(
                want_from(&creds(source.clone())),
                Some(Want::NoLogin),
                "{source}"
            );
        }
    }

    #[test]
    fn merging_keeps_the_consumers_keys_in_place() {
        let current =
            obj(json!({"a": 1, "claudeAiOauth": {"accessToken": "old"}, "mcpOAuth": {"x": 1}}));
        let want = Want::Login(obj(json!({"accessToken": "new", "expiresAt": 5})));
        let next = merged(Some(&current), &want);
        assert_eq!(
            Value::Object(next.clone()),
            json!({"a": 1, "claudeAiOauth": {"accessToken": "new", "expiresAt": 5}, "mcpOAuth": {"x": 1}})
        );
        assert_eq!(
            next.keys().collect::<Vec<_>>(),
            ["a", "claudeAiOauth", "mcpOAuth"]
        );
        assert!(holds(&next, &want));
        let gone = merged(Some(&next), &Want::NoLogin);
        assert_eq!(
            Value::Object(gone.clone()),
            json!({"a": 1, "mcpOAuth": {"x": 1}})
        );
        assert!(holds(&gone, &Want::NoLogin));
        assert!(!holds(&gone, &want));
        assert_eq!(
            Value::Object(merged(None, &want)),
            json!({"claudeAiOauth": {"accessToken": "new", "expiresAt": 5}})
        );
    }

    #[test]
    fn a_refresh_token_makes_a_real_login_by_table() {
        for (doc, real) in [
            (json!({"claudeAiOauth": {"refreshToken": "r"}}), true),
            (json!({"claudeAiOauth": {"refreshToken": ""}}), false),
            (json!({"claudeAiOauth": {"refreshToken": " "}}), false),
            (json!({"claudeAiOauth": {"refreshToken": null}}), false),
            (json!({"claudeAiOauth": {"accessToken": "a"}}), false),
            (json!({"mcpOAuth": {"refreshToken": "r"}}), false),
            (json!({}), false),
        ] {
            assert_eq!(holds_refresh_token(&obj(doc.clone())), real, "{doc}");
        }
    }
}
