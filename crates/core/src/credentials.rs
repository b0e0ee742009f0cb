//! The credentials file model. It owns the rule that makes rewrites lossless: the whole document
//! is kept as ordered raw JSON, and only the fields this program owns are read into types and
//! written back. Every other key, at the top level and inside `claudeAiOauth`, keeps its value and
//! its place. This module never touches the filesystem; `store` does.

use serde_json::{Map, Number, Value};
use std::fmt;

use crate::secret::Secret;

/// The key Claude Code keeps its own login under.
pub const OAUTH_KEY: &str = "claudeAiOauth";

/// A parsed credentials document: the whole JSON object, in file order.
#[derive(Clone, Debug, PartialEq)]
pub struct Credentials {
    root: Map<String, Value>,
}

/// The typed view of `claudeAiOauth`: what this program reads. Copies, not references, so the
/// document can be updated while a view taken before the request is still in hand.
#[derive(Clone, Debug, PartialEq)]
pub struct OAuthView {
    pub access_token: Secret,
    pub refresh_token: Option<Secret>,
    /// Unix epoch milliseconds. `None` when absent or null.
    pub expires_at: Option<i64>,
    pub refresh_token_expires_at: Option<i64>,
    pub scopes: Option<Vec<String>>,
    /// The OAuth client the token belongs to (current Claude Code writes it).
    pub client_id: Option<String>,
    pub subscription_type: Option<String>,
    pub rate_limit_tier: Option<String>,
}

impl OAuthView {
    /// Blank tokens (`""`, `expiresAt` 0) are what Claude Code writes after a refresh it could not
    /// complete: the user is logged out.
    pub fn is_logged_out(&self) -> bool {
        self.access_token.is_blank() && self.refresh_token.as_ref().is_none_or(Secret::is_blank)
    }

    /// A fingerprint of the login's own fields (`accessToken`, `refreshToken`, `expiresAt`,
    /// `clientId`): only a change to these is a new login state. A rewrite that changes
    /// anything else (an MCP token, a setting) leaves it as it was. Process-local; never stored.
    pub fn own_fields_key(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::hash::DefaultHasher::new();
        self.access_token.expose().hash(&mut h);
        self.refresh_token.as_ref().map(Secret::expose).hash(&mut h);
        self.expires_at.hash(&mut h);
        self.client_id.hash(&mut h);
        h.finish()
    }

    /// The refresh token, if there is a usable one.
    pub fn usable_refresh_token(&self) -> Option<&Secret> {
        self.refresh_token.as_ref().filter(|t| !t.is_blank())
    }

    /// An access-only login: an access token, and no (or a blank) refresh token. What a mirror
    /// holds, or a long-lived token: served until it expires, never refreshed here.
    pub fn is_access_only(&self) -> bool {
        !self.access_token.is_blank() && self.usable_refresh_token().is_none()
    }

    /// Whether the access token can still be used for more than `margin_ms` after `now` (epoch
    /// ms): not blank, and not expiring before then. An unknown expiry (no `expiresAt`) is not
    /// known to be over.
    pub fn access_token_lasts(&self, now: i64, margin_ms: i64) -> bool {
        // No `expiresAt`: nothing says it still works (`status` calls it expired), so it is
        // not handed out as lasting.
        !self.access_token.is_blank()
            && self
                .expires_at
                .is_some_and(|at| at.saturating_sub(now) > margin_ms)
    }
}

/// What a token response changes. Only these fields are ever written by this program.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenUpdate {
    pub access_token: Secret,
    /// `None`: keep what the file has (a refresh whose response carried no new refresh token).
    pub refresh_token: Option<Secret>,
    pub expires_at: i64,
    pub refresh_token_expires_at: Option<i64>,
    pub scopes: Option<Vec<String>>,
}

/// A new login: the token response, the plan the account's profile gave (when it was read), and
/// the client it was made with when that is not the built-in one.
#[derive(Clone, Debug, PartialEq)]
pub struct LoginGrant {
    pub tokens: TokenUpdate,
    /// `subscriptionType` as Claude Code writes it (`max`, `pro`, ...).
    pub subscription_type: Option<String>,
    /// `rateLimitTier`.
    pub rate_limit_tier: Option<String>,
    /// `clientId`: the tokens belong to this client, so its refreshes must name it.
    pub client_id: Option<String>,
}

/// Why a document cannot be used. Never carries file content (it may hold tokens).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Not JSON at all, or cut short (a writer may be half-way through).
    Syntax(String),
    /// JSON, but not an object at the top level.
    NotAnObject,
    /// A field this program owns has the wrong type.
    BadField {
        field: &'static str,
        expected: &'static str,
    },
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::Syntax(e) => write!(f, "not valid JSON ({e})"),
            ParseError::NotAnObject => f.write_str("the top level is not a JSON object"),
            ParseError::BadField { field, expected } => {
                write!(f, "`{OAUTH_KEY}.{field}` is not {expected}")
            }
        }
    }
}

impl std::error::Error for ParseError {}

impl Credentials {
    /// An empty document, for a first login.
    pub fn empty() -> Self {
        Credentials { root: Map::new() }
    }

    pub fn parse(bytes: &[u8]) -> Result<Self, ParseError> {
        // serde_json's error text names a line and column, never the input, so it is safe to show.
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| ParseError::Syntax(e.to_string()))?;
        let Value::Object(root) = value else {
            return Err(ParseError::NotAnObject);
        };
        let doc = Credentials { root };
        // Validate the owned fields now, so a document that parses is one we can update.
        doc.oauth()?;
        Ok(doc)
    }

    /// The document as the file should hold it: two-space indented, ending in a newline.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out =
            serde_json::to_vec_pretty(&self.root).expect("a serde_json::Map always serializes");
        out.push(b'\n');
        out
    }

    /// The document as one line of JSON, as Claude Code stores it in the Keychain.
    pub fn to_compact_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&self.root).expect("a serde_json::Map always serializes")
    }

    /// The typed view of `claudeAiOauth`; `Ok(None)` when the key is absent or null.
    pub fn oauth(&self) -> Result<Option<OAuthView>, ParseError> {
        let oauth = match self.root.get(OAUTH_KEY) {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::Object(o)) => o,
            Some(_) => {
                return Err(ParseError::BadField {
                    field: "(itself)",
                    expected: "an object",
                });
            }
        };
        Ok(Some(OAuthView {
            access_token: Secret::new(opt_str(oauth, "accessToken")?.unwrap_or_default()),
            refresh_token: opt_str(oauth, "refreshToken")?.map(Secret::new),
            expires_at: opt_millis(oauth, "expiresAt")?,
            refresh_token_expires_at: opt_millis(oauth, "refreshTokenExpiresAt")?,
            scopes: opt_scopes(oauth)?,
            client_id: lenient_str(oauth, "clientId"),
            subscription_type: lenient_str(oauth, "subscriptionType"),
            rate_limit_tier: lenient_str(oauth, "rateLimitTier"),
        }))
    }

    /// Writes the owned fields of `update` into `claudeAiOauth`, creating it when absent. Keys
    /// that exist keep their position; new ones go at the end. Nothing else changes.
    pub fn apply(&mut self, update: &TokenUpdate) {
        let oauth = self
            .root
            .entry(OAUTH_KEY)
            .or_insert_with(|| Value::Object(Map::new()));
        if !oauth.is_object() {
            *oauth = Value::Object(Map::new());
        }
        let Value::Object(oauth) = oauth else {
            unreachable!("just made an object")
        };
        oauth.insert(
            "accessToken".into(),
            Value::String(update.access_token.expose().to_owned()),
        );
        if let Some(rt) = &update.refresh_token {
            oauth.insert("refreshToken".into(), Value::String(rt.expose().to_owned()));
        }
        oauth.insert("expiresAt".into(), Value::Number(update.expires_at.into()));
        if let Some(at) = update.refresh_token_expires_at {
            oauth.insert("refreshTokenExpiresAt".into(), Value::Number(at.into()));
        }
        if let Some(scopes) = &update.scopes {
            oauth.insert(
                "scopes".into(),
                Value::Array(scopes.iter().cloned().map(Value::String).collect()),
            );
        }
    }

    /// Writes a new login: `claudeAiOauth` is replaced whole by the grant's fields. A new login
    /// is a new identity: nothing of the old one (its refresh token, `clientId`, plan, account)
    /// may survive inside it. Top-level keys stay, and `claudeAiOauth` keeps its place. The plan
    /// the new login's profile gave is written after the tokens, then the login's `clientId`,
    /// where Claude Code puts them; a plan not known is left out, for Claude Code to fill in.
    pub fn replace_login(&mut self, login: &LoginGrant) {
        self.root
            .insert(OAUTH_KEY.into(), Value::Object(Map::new()));
        self.apply(&login.tokens);
        let Some(Value::Object(oauth)) = self.root.get_mut(OAUTH_KEY) else {
            unreachable!("apply leaves claudeAiOauth an object")
        };
        let plan = [
            ("subscriptionType", &login.subscription_type),
            ("rateLimitTier", &login.rate_limit_tier),
            ("clientId", &login.client_id),
        ];
        for (key, value) in plan {
            if let Some(v) = value {
                oauth.insert(key.into(), Value::String(v.clone()));
            }
        }
    }

    /// Removes `claudeAiOauth` and nothing else. Returns whether there was one.
    pub fn remove_login(&mut self) -> bool {
        self.root.shift_remove(OAUTH_KEY).is_some()
    }

    /// True when the document holds no keys at all.
    pub fn is_empty(&self) -> bool {
        self.root.is_empty()
    }

    /// The raw top-level object, for callers that need to look at keys this module does not own.
    pub fn root(&self) -> &Map<String, Value> {
        &self.root
    }
}

fn opt_str(oauth: &Map<String, Value>, field: &'static str) -> Result<Option<String>, ParseError> {
    match oauth.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ParseError::BadField {
            field,
            expected: "a string",
        }),
    }
}

/// A field this program reads but does not own: an unexpected type is not ours to refuse.
fn lenient_str(oauth: &Map<String, Value>, field: &str) -> Option<String> {
    oauth.get(field).and_then(Value::as_str).map(str::to_owned)
}

fn opt_millis(oauth: &Map<String, Value>, field: &'static str) -> Result<Option<i64>, ParseError> {
    match oauth.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => number_to_millis(n).map(Some).ok_or(ParseError::BadField {
            field,
            expected: "a number of milliseconds",
        }),
        Some(_) => Err(ParseError::BadField {
            field,
            expected: "a number of milliseconds",
        }),
    }
}

/// Whole milliseconds from a JSON number; a fractional value (some writers use floats) is
/// truncated, since a millisecond either way changes no decision.
fn number_to_millis(n: &Number) -> Option<i64> {
    n.as_i64().or_else(|| {
        let f = n.as_f64()?;
        (f.is_finite() && f.abs() < 9.0e15).then_some(f as i64)
    })
}

fn opt_scopes(oauth: &Map<String, Value>) -> Result<Option<Vec<String>>, ParseError> {
    const BAD: ParseError = ParseError::BadField {
        field: "scopes",
        expected: "a list of strings",
    };
    match oauth.get("scopes") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned).ok_or(BAD))
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => Err(BAD),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SAMPLE: &str = r#"{
      "first": 1,
      "claudeAiOauth": {
        "accessToken": "sk-ant-oat01-old-access-token-AAAAAAAAAAAA",
        "refreshToken": "sk-ant-ort01-old-refresh-token-RRRRRRRRRRRR",
        "expiresAt": 1756162077244,
        "scopes": ["user:inference", "user:profile"],
        "subscriptionType": "max",
        "rateLimitTier": "default_claude_max_20x",
        "clientId": "client-in-file",
        "future": {"nested": [1, 2.50, "x"]}
      },
      "mcpOAuth": {"server": {"accessToken": "mcp-token-should-stay"}},
      "zeta": 12345678901234567890123
    }"#;

    fn update() -> TokenUpdate {
        TokenUpdate {
            access_token: Secret::new("sk-ant-oat01-new-access-token-BBBBBBBBBBBB"),
            refresh_token: Some(Secret::new("sk-ant-ort01-new-refresh-token-SSSSSSSSSSS")),
            expires_at: 1_800_000_000_000,
            refresh_token_expires_at: Some(1_900_000_000_000),
            scopes: None,
        }
    }

    #[test]
    fn reads_owned_fields() {
        let doc = Credentials::parse(SAMPLE.as_bytes()).unwrap();
        let o = doc.oauth().unwrap().unwrap();
        assert_eq!(o.expires_at, Some(1756162077244));
        assert_eq!(o.client_id.as_deref(), Some("client-in-file"));
        assert_eq!(o.subscription_type.as_deref(), Some("max"));
        assert_eq!(
            o.scopes,
            Some(vec!["user:inference".into(), "user:profile".into()])
        );
        assert!(o.refresh_token_expires_at.is_none());
        assert!(!o.is_logged_out());
    }

    #[test]
    fn apply_changes_only_owned_fields_and_keeps_order() {
        let before = Credentials::parse(SAMPLE.as_bytes()).unwrap();
        let mut doc = before.clone();
        doc.apply(&update());
        let after = Credentials::parse(&doc.to_bytes()).unwrap();

        let keys: Vec<_> = after.root.keys().cloned().collect();
        assert_eq!(keys, ["first", "claudeAiOauth", "mcpOAuth", "zeta"]);
        let oauth_keys: Vec<_> = after.root[OAUTH_KEY]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        assert_eq!(
            oauth_keys,
            [
                "accessToken",
                "refreshToken",
                "expiresAt",
                "scopes",
                "subscriptionType",
                "rateLimitTier",
                "clientId",
                "future",
                "refreshTokenExpiresAt"
            ]
        );
        // Big integers and decimal spellings survive byte for byte.
        let text = String::from_utf8(after.to_bytes()).unwrap();
        assert!(text.contains("12345678901234567890123"));
        assert!(text.contains("2.50"));
        assert_eq!(before.root["mcpOAuth"], after.root["mcpOAuth"]);
        let o = after.oauth().unwrap().unwrap();
        assert_eq!(o.access_token.expose(), update().access_token.expose());
        assert_eq!(o.refresh_token_expires_at, Some(1_900_000_000_000));
        // Scopes were not in the update: the stored ones stay.
        assert_eq!(o.scopes.unwrap().len(), 2);
    }

    #[test]
    fn refresh_without_new_refresh_token_keeps_the_old_one() {
        let mut doc = Credentials::parse(SAMPLE.as_bytes()).unwrap();
        doc.apply(&TokenUpdate {
            refresh_token: None,
            ..update()
        });
        let o = doc.oauth().unwrap().unwrap();
        assert_eq!(
            o.refresh_token.unwrap().expose(),
            "sk-ant-ort01-old-refresh-token-RRRRRRRRRRRR"
        );
    }

    #[test]
    fn login_replaces_the_old_refresh_token_and_logout_keeps_the_rest() {
        let mut doc = Credentials::parse(SAMPLE.as_bytes()).unwrap();
        doc.replace_login(&LoginGrant {
            tokens: TokenUpdate {
                refresh_token: None,
                refresh_token_expires_at: None,
                ..update()
            },
            subscription_type: None,
            rate_limit_tier: None,
            client_id: None,
        });
        let o = doc.oauth().unwrap().unwrap();
        assert!(
            o.refresh_token.is_none(),
            "a login without a refresh token saves none"
        );
        assert_eq!(
            o.subscription_type, None,
            "a new login is a new identity: the old plan does not survive inside it"
        );
        assert_eq!(o.client_id, None, "nor the old client id");
        let keys: Vec<_> = doc.root.keys().cloned().collect();
        assert_eq!(
            keys,
            ["first", "claudeAiOauth", "mcpOAuth", "zeta"],
            "claudeAiOauth keeps its place"
        );
        assert!(doc.remove_login());
        assert!(!doc.remove_login());
        let keys: Vec<_> = doc.root.keys().cloned().collect();
        assert_eq!(keys, ["first", "mcpOAuth", "zeta"]);
        assert!(!doc.is_empty());
        let mut only = Credentials::parse(br#"{"claudeAiOauth": {}}"#).unwrap();
        only.remove_login();
        assert!(only.is_empty());
    }

    #[test]
    fn login_writes_the_new_plan_after_the_tokens() {
        let mut doc = Credentials::parse(SAMPLE.as_bytes()).unwrap();
        doc.replace_login(&LoginGrant {
            tokens: update(),
            subscription_type: Some("pro".into()),
            rate_limit_tier: Some("default_claude_ai".into()),
            client_id: None,
        });
        let o = doc.oauth().unwrap().unwrap();
        assert_eq!(o.subscription_type.as_deref(), Some("pro"));
        assert_eq!(o.rate_limit_tier.as_deref(), Some("default_claude_ai"));
        assert_eq!(
            o.client_id, None,
            "the old login's other keys are still gone"
        );
        assert_eq!(
            keys(&doc.root[OAUTH_KEY]),
            [
                "accessToken",
                "refreshToken",
                "expiresAt",
                "refreshTokenExpiresAt",
                "subscriptionType",
                "rateLimitTier"
            ]
        );
        assert_eq!(
            keys(&Value::Object(doc.root.clone())),
            ["first", "claudeAiOauth", "mcpOAuth", "zeta"]
        );
    }

    #[test]
    fn login_writes_its_client_after_the_plan() {
        let mut doc = Credentials::parse(SAMPLE.as_bytes()).unwrap();
        doc.replace_login(&LoginGrant {
            tokens: update(),
            subscription_type: Some("pro".into()),
            rate_limit_tier: None,
            client_id: Some("client-of-the-login".into()),
        });
        let o = doc.oauth().unwrap().unwrap();
        assert_eq!(o.client_id.as_deref(), Some("client-of-the-login"));
        assert_eq!(keys(&doc.root[OAUTH_KEY]).last(), Some(&"clientId"));
    }

    fn keys(v: &Value) -> Vec<&str> {
        v.as_object().unwrap().keys().map(String::as_str).collect()
    }

    #[test]
    fn parse_errors_by_table() {
        let cases: &[(&str, Option<ParseError>)] = &[
            ("{}", None),
            (r#"{"claudeAiOauth": null}"#, None),
            ("", Some(ParseError::Syntax(String::new()))),
            (
                r#"{"claudeAiOauth": {"accessToken": "#,
                Some(ParseError::Syntax(String::new())),
            ),
            ("[]", Some(ParseError::NotAnObject)),
            (
                r#"{"claudeAiOauth": 3}"#,
                Some(ParseError::BadField {
                    field: "(itself)",
                    expected: "an object",
                }),
            ),
            (
                r#"{"claudeAiOauth": {"expiresAt": "soon"}}"#,
                Some(ParseError::BadField {
                    field: "expiresAt",
                    expected: "a number of milliseconds",
                }),
            ),
            (
                r#"{"claudeAiOauth": {"scopes": [1]}}"#,
                Some(ParseError::BadField {
                    field: "scopes",
                    expected: "a list of strings",
                }),
            ),
            (r#"{"claudeAiOauth": {"expiresAt": 1756162077244.0}}"#, None),
        ];
        for (input, want) in cases {
            let got = Credentials::parse(input.as_bytes()).err();
            match (want, &got) {
                (Some(ParseError::Syntax(_)), Some(ParseError::Syntax(_))) => {}
                _ => assert_eq!(want.as_ref(), got.as_ref(), "input {input:?}"),
            }
        }
    }

    #[test]
    fn blank_tokens_mean_logged_out() {
        let doc = Credentials::parse(
            br#"{"claudeAiOauth": {"accessToken": "", "refreshToken": "", "expiresAt": 0}}"#,
        )
        .unwrap();
        let o = doc.oauth().unwrap().unwrap();
        assert!(o.is_logged_out());
        assert!(o.usable_refresh_token().is_none());
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| Value::Number(n.into())),
            (-1.0e12f64..1.0e12).prop_map(|f| serde_json::json!(f)),
            ".{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 5, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::vec((".{0,8}", inner), 0..5)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Arbitrary extra keys, at the top level and inside claudeAiOauth, survive
        /// read -> update -> write with their values and in their order.
        #[test]
        fn extra_keys_survive_round_trip(
            top in prop::collection::vec(("[a-zA-Z_]{1,10}", arb_json()), 0..6),
            inner in prop::collection::vec(("x[a-zA-Z_]{0,10}", arb_json()), 0..6),
        ) {
            let mut root = Map::new();
            for (k, v) in &top {
                if k != OAUTH_KEY { root.insert(k.clone(), v.clone()); }
            }
            let mut oauth = Map::new();
            oauth.insert("accessToken".into(), "sk-ant-oat01-aaaaaaaaaaaaaaaaaaaaaaaa".into());
            oauth.insert("refreshToken".into(), "sk-ant-ort01-rrrrrrrrrrrrrrrrrrrrrrrr".into());
            oauth.insert("expiresAt".into(), 1u64.into());
            for (k, v) in &inner { oauth.insert(k.clone(), v.clone()); }
            root.insert(OAUTH_KEY.into(), Value::Object(oauth.clone()));
            let bytes = serde_json::to_vec(&root).unwrap();

            let mut doc = Credentials::parse(&bytes).unwrap();
            doc.apply(&update());
            let back = Credentials::parse(&doc.to_bytes()).unwrap();

            let owned = ["accessToken", "refreshToken", "expiresAt", "refreshTokenExpiresAt", "scopes"];
            let keys_before: Vec<_> = root.keys().collect();
            let keys_after: Vec<_> = back.root.keys().collect();
            prop_assert_eq!(keys_before, keys_after);
            for (k, v) in &root {
                if k != OAUTH_KEY { prop_assert_eq!(Some(v), back.root.get(k)); }
            }
            let back_oauth = back.root[OAUTH_KEY].as_object().unwrap();
            let extra_before: Vec<_> = oauth.iter().filter(|(k, _)| !owned.contains(&k.as_str())).collect();
            let extra_after: Vec<_> = back_oauth.iter().filter(|(k, _)| !owned.contains(&k.as_str())).collect();
            prop_assert_eq!(extra_before, extra_after);
        }

        /// Any byte string either parses or is refused with an error; never a panic.
        #[test]
        fn parse_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = Credentials::parse(&bytes);
        }
    }
}
