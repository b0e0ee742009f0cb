//! The token endpoint's answer: a grant or a sorted error. Pure (the caller passes the clock),
//! so every status, header and body shape is tested without a server.

use std::time::SystemTime;

use serde_json::{Map, Value};

use super::{DEFAULT_EXPIRES_IN, OAuthError, Refusal, TokenGrant};
use crate::credentials::TokenUpdate;
use crate::schedule::{cap_retry_after, epoch_millis, parse_retry_after};
use crate::secret::{Secret, printable};
use crate::settings::Url;

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
                // Only a URL this program could be pointed at is offered as the setting: the
                // caller resolved a relative one against the token URL already.
                Some(loc) if is_web_url(loc) => format!(
                    "the token endpoint redirected (HTTP {status}) to {loc}; redirects are not \
                     followed because the request carries a secret. If the endpoint has moved, \
                     pass --token-url {loc}",
                    loc = printable(loc)
                ),
                Some(loc) => format!(
                    "the token endpoint redirected (HTTP {status}) to `{}`, which is not an \
                     https URL; redirects are not followed because the request carries a \
                     secret: check --token-url",
                    printable(loc)
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
        _ => {
            let (code, detail) = error_fields(json.as_ref());
            let html = json.is_none() && looks_like_html(answer.body);
            let reason = format!(
                "the token endpoint refused the request: HTTP {status}{}",
                if html {
                    " (an HTML page, not the endpoint's JSON)".to_owned()
                } else {
                    describe_error(json.as_ref())
                }
            );
            // Sorted by the code as RFC 6749 spells it: `INVALID_GRANT` or `invalid_grant `
            // from a sloppy server means the same refusal (the message keeps what it sent).
            let code = code.map(|c| c.trim().to_ascii_lowercase());
            Err(OAuthError::Permanent {
                code,
                refusal: Box::new(Refusal {
                    reason,
                    status,
                    detail,
                    html,
                }),
            })
        }
    }
}

/// Whether `text` is an absolute http(s) URL, one `--token-url` could name.
fn is_web_url(text: &str) -> bool {
    Url::parse(text).is_ok_and(|u| matches!(u.scheme(), "https" | "http") && u.has_host())
}

/// A body that is a web page: what a proxy, a firewall or a web server that is not the token
/// endpoint answers with.
fn looks_like_html(body: &[u8]) -> bool {
    let start: Vec<u8> = body
        .iter()
        .skip_while(|b| b.is_ascii_whitespace())
        .take(64)
        .map(u8::to_ascii_lowercase)
        .collect();
    start.starts_with(b"<!doctype html")
        || start.starts_with(b"<html")
        || start.starts_with(b"<head")
        || start.starts_with(b"<body")
        || start.starts_with(b"<!--")
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

/// The error code and its description, from either shape a token endpoint uses: RFC 6749's
/// flat `{"error": "invalid_grant", "error_description": "..."}`, or Anthropic's nested
/// `{"type": "error", "error": {"type": "invalid_client", "message": "..."}}`. Both are short,
/// one line, and safe to print.
fn error_fields(json: Option<&Map<String, Value>>) -> (Option<String>, Option<String>) {
    let Some(map) = json else {
        return (None, None);
    };
    let text = |v: Option<&Value>| {
        v.and_then(Value::as_str)
            .map(one_line)
            .filter(|t| !t.trim().is_empty())
    };
    let nested = map.get("error").and_then(Value::as_object);
    let code = text(map.get("error")).or_else(|| nested.and_then(|e| text(e.get("type"))));
    let detail =
        text(map.get("error_description")).or_else(|| nested.and_then(|e| text(e.get("message"))));
    (code, detail)
}

/// Server text on one short line: line breaks and tabs become spaces, other control
/// characters and bidirectional overrides are escaped, and it is cut at 300 characters.
fn one_line(text: &str) -> String {
    let flat: String = text
        .chars()
        .map(|c| {
            if matches!(c, '\n' | '\r' | '\t') {
                ' '
            } else {
                c
            }
        })
        .take(300)
        .collect();
    printable(&flat)
}

/// `: invalid_grant (Refresh token expired)` from an OAuth or Anthropic-style error body, short
/// and on one line. Server text is not trusted to be short or free of secrets; callers scrub it.
fn describe_error(json: Option<&Map<String, Value>>) -> String {
    match error_fields(json) {
        (Some(c), Some(d)) => format!(": {c} ({d})"),
        (Some(c), None) => format!(": {c}"),
        (None, Some(d)) => format!(": {d}"),
        (None, None) => String::new(),
    }
}
