//! The token endpoint's answer: a grant or a sorted error. Pure (the caller passes the clock),
//! so every status, header and body shape is tested without a server.

use std::time::SystemTime;

use serde_json::{Map, Value};

use super::{DEFAULT_EXPIRES_IN, OAuthError, TokenGrant};
use crate::credentials::TokenUpdate;
use crate::schedule::{cap_retry_after, epoch_millis, parse_retry_after};
use crate::secret::Secret;

/// The parts of an HTTP answer the interpretation needs.
#[derive(Debug)]
pub struct Answer<'a> {
    pub status: u16,
    pub location: Option<&'a str>,
    pub retry_after: Option<&'a str>,
    pub body: &'a [u8],
}

/// Turns an answer into a grant or a sorted error. Pure: `sent_at` anchors `expiresAt`, `now`
/// anchors an HTTP-date `Retry-After`.
pub fn interpret_response(
    answer: &Answer<'_>,
    sent_at: SystemTime,
    now: SystemTime,
) -> Result<TokenGrant, OAuthError> {
    let status = answer.status;
    let json: Option<Map<String, Value>> = serde_json::from_slice(answer.body).ok();
    match status {
        200..=299 => {
            let Some(map) = json else {
                return Err(OAuthError::Transient {
                    reason: format!(
                        "the token endpoint answered HTTP {status} with a body that is not JSON"
                    ),
                    retry_after: None,
                });
            };
            parse_grant(&map, sent_at)
        }
        300..=399 => Err(OAuthError::Misdirected {
            reason: match answer.location {
                Some(loc) => format!(
                    "the token endpoint redirected (HTTP {status}) to {loc}; redirects are not \
                     followed because the request carries a secret. If the endpoint has moved, \
                     pass --token-url {loc}"
                ),
                None => format!(
                    "the token endpoint answered with a redirect (HTTP {status}) and no Location; \
                     check --token-url"
                ),
            },
        }),
        408 | 429 | 500..=599 => Err(OAuthError::Transient {
            reason: format!(
                "the token endpoint answered HTTP {status}{}",
                describe_error(json.as_ref())
            ),
            retry_after: answer
                .retry_after
                .and_then(|v| parse_retry_after(v, now))
                .map(|asked| {
                    let (honoured, capped) = cap_retry_after(asked);
                    if capped {
                        tracing::warn!(
                            "the token endpoint asked to wait {}s (Retry-After); capped at {}s",
                            asked.as_secs(),
                            honoured.as_secs()
                        );
                    }
                    honoured
                }),
        }),
        _ => Err(OAuthError::Permanent {
            reason: format!(
                "the token endpoint refused the request: HTTP {status}{}",
                describe_error(json.as_ref())
            ),
            code: json
                .as_ref()
                .and_then(|m| m.get("error"))
                .and_then(Value::as_str)
                .map(str::to_owned),
        }),
    }
}

/// Reads a 2xx token response. A missing `access_token` is a failed attempt (transient: the
/// contract counts it as a server fault), and nothing is written.
pub fn parse_grant(
    map: &Map<String, Value>,
    sent_at: SystemTime,
) -> Result<TokenGrant, OAuthError> {
    let access_token = match map.get("access_token").and_then(Value::as_str) {
        Some(t) if !t.trim().is_empty() => Secret::new(t),
        _ => {
            return Err(OAuthError::Transient {
                reason: "the token endpoint answered 200 without an access_token".into(),
                retry_after: None,
            });
        }
    };
    let refresh_token = map
        .get("refresh_token")
        .and_then(Value::as_str)
        .filter(|t| !t.trim().is_empty())
        .map(Secret::new);
    let sent = epoch_millis(sent_at);
    let expires_in = seconds(map.get("expires_in")).unwrap_or(DEFAULT_EXPIRES_IN);
    let rt_expires_in = seconds(map.get("refresh_token_expires_in"));
    let scopes = map
        .get("scope")
        .and_then(Value::as_str)
        .map(|s| s.split_whitespace().map(str::to_owned).collect::<Vec<_>>());
    Ok(TokenUpdate {
        access_token,
        refresh_token,
        expires_at: sent.saturating_add(millis(expires_in)),
        refresh_token_expires_at: rt_expires_in.map(|s| sent.saturating_add(millis(s))),
        scopes,
    })
}

fn millis(secs: u64) -> i64 {
    i64::try_from(secs)
        .unwrap_or(i64::MAX / 1000)
        .saturating_mul(1000)
}

/// The longest lifetime a server can mean: a long-lived login asks for a year (31536000 s), so a
/// year and a day. A larger `expires_in` (`1e300`) would otherwise be saved as a date so far off
/// that the login is never refreshed again.
pub const MAX_LIFETIME_SECS: u64 = 366 * 86_400;

/// A lifetime in seconds: a JSON number (whole or not) or a numeric string, never negative, at
/// most [`MAX_LIFETIME_SECS`].
fn seconds(v: Option<&Value>) -> Option<u64> {
    any_seconds(v).map(|s| s.min(MAX_LIFETIME_SECS))
}

fn any_seconds(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.is_finite())
                .map(|f| f.max(0.0) as u64)
        }),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// `: invalid_grant (Refresh token expired)` from an OAuth or Anthropic-style error body, short
/// and on one line. Server text is not trusted to be short or free of secrets; callers scrub it.
fn describe_error(json: Option<&Map<String, Value>>) -> String {
    let Some(map) = json else {
        return String::new();
    };
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
    let nested = map.get("error").and_then(Value::as_object);
    let code = text(map.get("error")).or_else(|| nested.and_then(|e| text(e.get("type"))));
    let detail =
        text(map.get("error_description")).or_else(|| nested.and_then(|e| text(e.get("message"))));
    let joined = match (code, detail) {
        (Some(c), Some(d)) => format!("{c} ({d})"),
        (Some(c), None) => c,
        (None, Some(d)) => d,
        (None, None) => return String::new(),
    };
    let one_line: String = joined
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(300)
        .collect();
    format!(": {one_line}")
}
