//! The account behind a login, as Claude Code knows it. Two sources: the API's profile lookup
//! (`GET <api base>/api/oauth/profile`), which `login` makes after the code exchange so the login
//! it saves carries the plan (`subscriptionType`, `rateLimitTier`) Claude Code would have stored;
//! and Claude Code's own config, `.claude.json`, whose `oauthAccount.emailAddress` `status`
//! shows. Both are optional extras: nothing here can fail a login or a status, and the config is
//! only ever read.

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;

use serde_json::{Map, Value};

use crate::oauth::{error_chain, http_client, read_body, scrub};
use crate::secret::Secret;
use crate::settings::Url;

/// The path of the lookup under the API base, as Claude Code 2.1.332 calls it.
pub const PROFILE_PATH: [&str; 3] = ["api", "oauth", "profile"];
/// The beta flag the API asks of requests authorized by an OAuth token (Claude Code sends it).
pub const OAUTH_BETA: &str = "oauth-2025-04-20";
/// The scope the lookup needs: a login granted without it (`--long-lived`) skips it.
pub const PROFILE_SCOPE: &str = "user:profile";

/// What the profile says that a login keeps or shows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Profile {
    /// `subscriptionType` as Claude Code writes it (`max`, `pro`, `team`, `enterprise`).
    pub subscription_type: Option<String>,
    /// `rateLimitTier`, as the API names it.
    pub rate_limit_tier: Option<String>,
    pub email: Option<String>,
}

/// Why the lookup gave nothing. The message is for a warning: it never holds the token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProfileError(pub String);

impl fmt::Display for ProfileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ProfileError {}

/// Whether a login granted `scopes` may read the profile.
pub fn scopes_allow_lookup<S: AsRef<str>>(scopes: &[S]) -> bool {
    scopes.iter().any(|s| s.as_ref() == PROFILE_SCOPE)
}

/// `<base>/api/oauth/profile`: appended to the base's path, as Claude Code concatenates it, so
/// a base with a path of its own (a proxy) keeps it.
pub fn profile_url(api_base: &Url) -> Url {
    let mut url = api_base.clone();
    url.set_query(None);
    url.set_fragment(None);
    if let Ok(mut path) = url.path_segments_mut() {
        path.pop_if_empty().extend(PROFILE_PATH);
    }
    url
}

/// Looks the profile up with a fresh access token: one attempt, with the same HTTP policy as the
/// token endpoint (no redirects, timeouts, the User-Agent). Any failure is an error to warn
/// about; the caller goes on without the profile.
pub async fn fetch(
    api_base: &Url,
    user_agent: &str,
    access_token: &Secret,
) -> Result<Profile, ProfileError> {
    let url = profile_url(api_base);
    // Text from elsewhere never carries the token whole, even if a server echoes it.
    let fail = |what: String| ProfileError(scrub(&what, &[access_token]));
    let http = http_client(user_agent).map_err(|e| {
        fail(format!(
            "cannot set up the HTTP client: {}",
            error_chain(&e)
        ))
    })?;
    tracing::debug!(url = url.as_str(), "looking up the account's profile");
    let response = http
        .get(url.clone())
        .bearer_auth(access_token.expose())
        .header("anthropic-beta", OAUTH_BETA)
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| fail(format!("{url}: {}", error_chain(&e))))?;
    let status = response.status();
    let body = read_body(response)
        .await
        .map_err(|e| fail(format!("{url}: {}", error_chain(&e))))?;
    if !status.is_success() {
        return Err(fail(format!("{url} answered HTTP {}", status.as_u16())));
    }
    parse(&body).map_err(|e| fail(format!("{url}: {e}")))
}

/// Reads a profile answer. Only a body that is not a JSON object is an error; missing or
/// unexpected fields just leave those parts out.
pub fn parse(body: &[u8]) -> Result<Profile, String> {
    let Ok(Value::Object(root)) = serde_json::from_slice::<Value>(body) else {
        return Err("the answer is not a JSON object".into());
    };
    let section = |name: &str| root.get(name).and_then(Value::as_object);
    let text = |map: Option<&Map<String, Value>>, key: &str| {
        map.and_then(|m| m.get(key))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let organization = section("organization");
    let account = section("account");
    Ok(Profile {
        subscription_type: text(organization, "organization_type")
            .and_then(|t| subscription_type(&t))
            .map(str::to_owned),
        rate_limit_tier: text(organization, "rate_limit_tier").filter(|t| !t.is_empty()),
        email: text(account, "email_address")
            .or_else(|| text(account, "email"))
            .and_then(|e| plausible_email(&e)),
    })
}

/// Claude Code's name for an organization type; an unknown type has none (Claude Code stores
/// nothing then, and so do we).
pub fn subscription_type(organization_type: &str) -> Option<&'static str> {
    match organization_type {
        "claude_max" => Some("max"),
        "claude_pro" => Some("pro"),
        "claude_team" => Some("team"),
        "claude_enterprise" => Some("enterprise"),
        _ => None,
    }
}

/// An email fit to print: trimmed, not empty, short, and with no control characters (it comes
/// from a server or a file, and must not drive the user's terminal).
fn plausible_email(text: &str) -> Option<String> {
    let t = text.trim();
    (!t.is_empty() && t.chars().count() <= 320 && !t.chars().any(char::is_control))
        .then(|| t.to_owned())
}

/// Where Claude Code keeps its config: `$CLAUDE_CONFIG_DIR/.claude.json` when that is set (and
/// not empty, as for the credentials), else `~/.claude.json`.
pub fn claude_config_path(config_dir: Option<OsString>, home: Option<OsString>) -> Option<PathBuf> {
    let non_empty = |v: Option<OsString>| v.filter(|v| !v.is_empty());
    match (non_empty(config_dir), non_empty(home)) {
        (Some(dir), _) => Some(PathBuf::from(dir).join(".claude.json")),
        (None, Some(home)) => Some(PathBuf::from(home).join(".claude.json")),
        (None, None) => None,
    }
}

/// The signed-in account's email from Claude Code's config (`oauthAccount.emailAddress`), if
/// the file is there and says. Read only; a missing, unreadable or malformed file is no error:
/// the email is an extra.
pub fn email_from_claude_config(
    config_dir: Option<OsString>,
    home: Option<OsString>,
) -> Option<String> {
    let bytes = std::fs::read(claude_config_path(config_dir, home)?).ok()?;
    let config: Value = serde_json::from_slice(&bytes).ok()?;
    config
        .get("oauthAccount")?
        .get("emailAddress")?
        .as_str()
        .and_then(plausible_email)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn organization_types_by_table() {
        let cases = [
            ("claude_max", Some("max")),
            ("claude_pro", Some("pro")),
            ("claude_team", Some("team")),
            ("claude_enterprise", Some("enterprise")),
            ("claude_free", None),
            ("", None),
            ("CLAUDE_MAX", None),
        ];
        for (org, want) in cases {
            assert_eq!(subscription_type(org), want, "{org}");
        }
    }

    #[test]
    fn a_full_profile_is_read() {
        let body =
            br#"{"account": {"uuid": "u", "email": "ada@example.test", "display_name": "Ada"},
                        "organization": {"uuid": "o", "organization_type": "claude_max",
                                         "rate_limit_tier": "default_claude_max_20x"}}"#;
        assert_eq!(
            parse(body),
            Ok(Profile {
                subscription_type: Some("max".into()),
                rate_limit_tier: Some("default_claude_max_20x".into()),
                email: Some("ada@example.test".into()),
            })
        );
    }

    #[test]
    fn partial_and_odd_profiles_leave_parts_out() {
        assert_eq!(parse(b"{}"), Ok(Profile::default()));
        let p = parse(br#"{"account": {"email_address": "bo@x.test", "email": "other@x.test"},
                           "organization": {"organization_type": "claude_new", "rate_limit_tier": 5}}"#)
        .unwrap();
        assert_eq!(p.email.as_deref(), Some("bo@x.test"), "email_address first");
        assert_eq!(p.subscription_type, None, "an unknown type is left out");
        assert_eq!(
            p.rate_limit_tier, None,
            "a tier that is not text is left out"
        );
        let p =
            parse(br#"{"account": {"email": "a\u001b[31m@x.test"}, "organization": []}"#).unwrap();
        assert_eq!(
            p.email, None,
            "an email with control characters is not printed"
        );
        for bad in [&b"<html>"[..], b"[]", b"\"x\"", b"", b"{\"a\":"] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn the_lookup_is_appended_to_the_base() {
        let cases = [
            (
                "https://api.anthropic.com",
                "https://api.anthropic.com/api/oauth/profile",
            ),
            (
                "https://api.anthropic.com/",
                "https://api.anthropic.com/api/oauth/profile",
            ),
            (
                "http://127.0.0.1:8080/proxy/",
                "http://127.0.0.1:8080/proxy/api/oauth/profile",
            ),
            (
                "http://127.0.0.1:8080/proxy?x=1",
                "http://127.0.0.1:8080/proxy/api/oauth/profile",
            ),
        ];
        for (base, want) in cases {
            assert_eq!(
                profile_url(&Url::parse(base).unwrap()).as_str(),
                want,
                "{base}"
            );
        }
    }

    #[test]
    fn the_lookup_needs_the_profile_scope() {
        assert!(scopes_allow_lookup(&["user:inference", "user:profile"]));
        assert!(!scopes_allow_lookup(&["user:inference"]));
        assert!(!scopes_allow_lookup::<&str>(&[]));
    }

    #[test]
    fn claude_config_is_found_like_claude_code_finds_it() {
        let p = |dir: Option<&str>, home: Option<&str>| {
            claude_config_path(dir.map(Into::into), home.map(Into::into))
        };
        assert_eq!(p(Some("/c"), Some("/h")), Some("/c/.claude.json".into()));
        assert_eq!(p(Some(""), Some("/h")), Some("/h/.claude.json".into()));
        assert_eq!(p(None, Some("/h")), Some("/h/.claude.json".into()));
        assert_eq!(p(None, None), None);
    }

    #[test]
    fn the_email_is_read_from_claude_config_and_anything_odd_is_ignored() {
        let dir = std::env::temp_dir().join(format!("tokend-profile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let read = |bytes: &[u8]| {
            std::fs::write(dir.join(".claude.json"), bytes).unwrap();
            email_from_claude_config(Some(dir.clone().into()), None)
        };
        assert_eq!(
            read(br#"{"oauthAccount": {"emailAddress": " ada@example.test "}}"#).as_deref(),
            Some("ada@example.test")
        );
        for odd in [
            &b"{"[..],
            b"[]",
            b"{\"oauthAccount\": null}",
            b"{\"oauthAccount\": {\"emailAddress\": 3}}",
            b"{\"oauthAccount\": {\"emailAddress\": \"\"}}",
        ] {
            assert_eq!(read(odd), None, "{:?}", String::from_utf8_lossy(odd));
        }
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            email_from_claude_config(Some(dir.into()), None),
            None,
            "no file"
        );
    }

    proptest! {
        #[test]
        fn parse_never_panics(body in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse(&body);
        }
    }
}
