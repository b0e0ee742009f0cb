//! The token endpoint client. It owns the wire format (JSON request bodies, the token response),
//! the HTTP policy (rustls, timeouts, no redirects, the User-Agent), and the sorting of every
//! failure into transient ("may work if retried") or permanent ("will not"). It never retries by
//! itself and never touches the file: the caller decides, because only the caller knows whether
//! a refresh token may still be spent.

use std::fmt;
use std::time::{Duration, SystemTime};

use serde_json::{Map, Value, json};

use crate::credentials::TokenUpdate;
use crate::schedule::{cap_retry_after, epoch_millis, parse_retry_after};
use crate::secret::{Secret, mask};
use crate::settings::Url;

/// Connecting should be quick; a token endpoint that takes longer is as good as down.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The whole request, from connect to the last byte of the answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// `expires_in` when the response leaves it out (the contract's default).
const DEFAULT_EXPIRES_IN: u64 = 3600;
/// A token response is a few hundred bytes; anything much bigger is not one.
const MAX_BODY: usize = 256 * 1024;

/// Why a request did not produce tokens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OAuthError {
    /// May work if retried: network, timeout, 408, 429, 5xx, a 200 without `access_token`.
    Transient {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// The server refused the grant (any 4xx but 408 and 429): it will not work if retried.
    Permanent {
        reason: String,
        /// The OAuth `error` code when the server sent one (`invalid_grant`, ...).
        code: Option<String>,
    },
    /// The endpoint did not act as a token endpoint: it redirected (never followed, the body
    /// carries a secret), or the client could not be set up. A setting must change; the grant
    /// itself was not judged.
    Misdirected { reason: String },
}

impl OAuthError {
    pub fn is_transient(&self) -> bool {
        matches!(self, OAuthError::Transient { .. })
    }

    /// The server's `Retry-After`, when it sent one with a transient failure.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            OAuthError::Transient { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

impl fmt::Display for OAuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OAuthError::Transient { reason, .. }
            | OAuthError::Permanent { reason, .. }
            | OAuthError::Misdirected { reason } => f.write_str(reason),
        }
    }
}

impl std::error::Error for OAuthError {}

/// What a successful token response grants, with times already turned into epoch milliseconds.
pub type TokenGrant = TokenUpdate;

/// How the client talks to the endpoint.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    pub token_url: Url,
    pub user_agent: String,
}

/// The HTTP client every request of this program goes through (the token endpoint, and the
/// profile lookup after a login), so they share one policy: rustls, timeouts, no redirects, the
/// configured User-Agent.
pub(crate) fn http_client(user_agent: &str) -> Result<reqwest::Client, reqwest::Error> {
    // reqwest is built without a crypto provider (to keep aws-lc's C build out); ring is
    // installed here, once. An `Err` means one is installed already, which is the goal.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        // Every request carries a secret (in the body, or as a bearer token): a redirect must
        // never re-send it somewhere else.
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .user_agent(user_agent)
        .build()
}

/// A refresh request.
#[derive(Debug)]
pub struct RefreshRequest<'a> {
    pub refresh_token: &'a Secret,
    pub client_id: &'a str,
    /// The stored scopes joined by spaces, sent as Claude Code sends them.
    pub scope: Option<String>,
}

/// The HTTP client, built only when a request is about to be made: a fresh `--once` and an idle
/// daemon never pay for TLS setup.
pub struct TokenClient {
    http: reqwest::Client,
    token_url: Url,
}

impl TokenClient {
    pub fn new(config: &ClientConfig) -> Result<Self, OAuthError> {
        let http = http_client(&config.user_agent).map_err(|e| OAuthError::Misdirected {
            reason: format!("cannot set up the HTTP client: {}", error_chain(&e)),
        })?;
        Ok(TokenClient {
            http,
            token_url: config.token_url.clone(),
        })
    }

    /// Spends `refresh_token` for a new token pair.
    pub async fn refresh(&self, req: &RefreshRequest<'_>) -> Result<TokenGrant, OAuthError> {
        let mut body = json!({
            "grant_type": "refresh_token",
            "refresh_token": req.refresh_token.expose(),
            "client_id": req.client_id,
        });
        if let (Some(scope), Some(map)) = (&req.scope, body.as_object_mut()) {
            map.insert("scope".into(), Value::String(scope.clone()));
        }
        self.post(&body, &[req.refresh_token]).await
    }

    /// Exchanges an authorization code (one attempt). The error says whether the server cannot
    /// have consumed the code (no connection was made, or it answered 429 before looking), the
    /// only cases in which the single-use code may be sent again.
    pub async fn exchange_code(&self, req: &CodeExchange<'_>) -> Result<TokenGrant, ExchangeError> {
        let mut body = json!({
            "grant_type": "authorization_code",
            "code": req.code.expose(),
            "state": req.state,
            "client_id": req.client_id,
            "redirect_uri": req.redirect_uri,
            "code_verifier": req.verifier.expose(),
        });
        if let (Some(secs), Some(map)) = (req.expires_in, body.as_object_mut()) {
            map.insert("expires_in".into(), Value::from(secs));
        }
        let secrets = [req.code, req.verifier];
        match self.send(&body, &secrets).await {
            Err(Unsent::Connect(error)) => Err(ExchangeError {
                error,
                code_unspent: true,
            }),
            Err(Unsent::Other(error)) => Err(ExchangeError {
                error,
                code_unspent: false,
            }),
            Ok((answer, sent_at)) => {
                interpret_response(&answer.borrow(), sent_at, SystemTime::now()).map_err(|e| {
                    ExchangeError {
                        error: scrub_error(e, &secrets),
                        code_unspent: answer.status == 429,
                    }
                })
            }
        }
    }

    /// Posts a JSON body to the token endpoint and interprets the answer. `secrets` are scrubbed
    /// from any text that comes back, in case a server echoes the request.
    pub async fn post(&self, body: &Value, secrets: &[&Secret]) -> Result<TokenGrant, OAuthError> {
        let (answer, sent_at) = self.send(body, secrets).await.map_err(Unsent::into_error)?;
        interpret_response(&answer.borrow(), sent_at, SystemTime::now())
            .map_err(|e| scrub_error(e, secrets))
    }

    /// One POST. Returns the raw answer and the moment the request was sent.
    async fn send(
        &self,
        body: &Value,
        secrets: &[&Secret],
    ) -> Result<(OwnedAnswer, SystemTime), Unsent> {
        let bytes = serde_json::to_vec(body).expect("a JSON value always serializes");
        // expiresAt is counted from here, so it can never be later than the server meant.
        let sent_at = SystemTime::now();
        tracing::debug!(url = self.token_url.as_str(), "sending token request");
        let response = self
            .http
            .post(self.token_url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(reqwest::header::ACCEPT, "application/json")
            .body(bytes)
            .send()
            .await
            .map_err(|e| {
                let error = transport_error(&e, secrets);
                if e.is_connect() {
                    Unsent::Connect(error)
                } else {
                    Unsent::Other(error)
                }
            })?;
        let status = response.status().as_u16();
        let header = |name: reqwest::header::HeaderName| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let location = header(reqwest::header::LOCATION);
        let retry_after = header(reqwest::header::RETRY_AFTER);
        let body = read_body(response)
            .await
            .map_err(|e| Unsent::Other(transport_error(&e, secrets)))?;
        tracing::debug!(status, "token endpoint answered");
        Ok((
            OwnedAnswer {
                status,
                location,
                retry_after,
                body,
            },
            sent_at,
        ))
    }
}

/// A failed send: `Connect` means no connection was made, so nothing reached the server.
enum Unsent {
    Connect(OAuthError),
    Other(OAuthError),
}

impl Unsent {
    fn into_error(self) -> OAuthError {
        match self {
            Unsent::Connect(e) | Unsent::Other(e) => e,
        }
    }
}

struct OwnedAnswer {
    status: u16,
    location: Option<String>,
    retry_after: Option<String>,
    body: Vec<u8>,
}

impl OwnedAnswer {
    fn borrow(&self) -> Answer<'_> {
        Answer {
            status: self.status,
            location: self.location.as_deref(),
            retry_after: self.retry_after.as_deref(),
            body: &self.body,
        }
    }
}

/// An authorization-code exchange request.
#[derive(Debug)]
pub struct CodeExchange<'a> {
    pub code: &'a Secret,
    pub state: &'a str,
    pub client_id: &'a str,
    pub redirect_uri: &'a str,
    pub verifier: &'a Secret,
    /// Requested access-token lifetime in seconds (the long-lived login asks for a year).
    pub expires_in: Option<u64>,
}

/// A failed code exchange, and whether the code may be sent again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExchangeError {
    pub error: OAuthError,
    /// True when the server cannot have consumed the code: no connection, or 429.
    pub code_unspent: bool,
}

pub(crate) async fn read_body(mut response: reqwest::Response) -> Result<Vec<u8>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = MAX_BODY.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if room <= chunk.len() {
            break;
        }
    }
    Ok(body)
}

fn transport_error(e: &reqwest::Error, secrets: &[&Secret]) -> OAuthError {
    if let Some(cert) = certificate_error(e) {
        return certificate_refused(cert, &scrub(&error_chain(e), secrets));
    }
    let what = if e.is_timeout() {
        "the token endpoint did not answer in time"
    } else if e.is_connect() {
        "cannot connect to the token endpoint"
    } else {
        "the request to the token endpoint failed"
    };
    let reason = scrub(&format!("{what}: {}", error_chain(e)), secrets);
    if e.is_builder() {
        OAuthError::Misdirected { reason }
    } else {
        OAuthError::Transient {
            reason,
            retry_after: None,
        }
    }
}

/// The TLS certificate problem behind a failed request, if that is what it was. rustls's error
/// sits inside `io::Error`s, whose `source()` skips the error they wrap, so each `io::Error` on
/// the way is opened by hand.
fn certificate_error<'e>(
    e: &'e (dyn std::error::Error + 'static),
) -> Option<&'e rustls::CertificateError> {
    let mut next = Some(e);
    while let Some(err) = next {
        if let Some(rustls::Error::InvalidCertificate(cert)) = err.downcast_ref::<rustls::Error>() {
            return Some(cert);
        }
        next = match err
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    None
}

/// How to make this machine trust a certificate authority, as the verifier in use reads it:
/// reqwest checks certificates with rustls-platform-verifier, which on macOS asks the system's
/// Keychain trust settings and elsewhere reads the system's CA bundle (found the way OpenSSL
/// finds it) or, when set, only `SSL_CERT_FILE` / `SSL_CERT_DIR`.
#[cfg(target_os = "macos")]
pub const CA_HINT: &str = "If your network (a corporate proxy, say) uses its own certificate \
    authority, add that CA to the System keychain and trust it for SSL: in Keychain Access, or \
    with `sudo security add-trusted-cert -d -r trustRoot -k /Library/Keychains/System.keychain \
    ca.pem`.";
#[cfg(not(target_os = "macos"))]
pub const CA_HINT: &str = "If your network (a corporate proxy, say) uses its own certificate \
    authority, add that CA to the system's trust store (Debian and Ubuntu: copy it as a .crt \
    file into /usr/local/share/ca-certificates/ and run `sudo update-ca-certificates`; Fedora \
    and RHEL: /etc/pki/ca-trust/source/anchors/ and `sudo update-ca-trust`), or set \
    SSL_CERT_FILE to a PEM file that holds it. SSL_CERT_FILE replaces the system's list, so that \
    file must also hold the usual CAs: the system bundle with yours appended.";

/// A certificate the client refused. Whether waiting can help depends on why: a certificate
/// that is expired or not yet valid may be this machine's clock, still unset early after boot,
/// which fixes itself (transient). Any other refusal (no trusted authority signed it, it names
/// another host) is a setting of this machine or of `--token-url` that must change: retrying
/// cannot help, so it ends the attempt at once (exit 1; the daemon waits for a change). Nothing
/// was sent: the handshake failed before the request.
fn certificate_refused(cert: &rustls::CertificateError, detail: &str) -> OAuthError {
    use rustls::CertificateError as C;
    match cert {
        C::Expired | C::ExpiredContext { .. } | C::NotValidYet | C::NotValidYetContext { .. } => {
            OAuthError::Transient {
                reason: format!(
                    "the token endpoint's TLS certificate is outside its validity period \
                     ({detail}); check this machine's clock"
                ),
                retry_after: None,
            }
        }
        C::UnknownIssuer => OAuthError::Misdirected {
            reason: format!(
                "the token endpoint's TLS certificate is not trusted: no certificate authority \
                 this machine trusts signed it ({detail}). {CA_HINT}"
            ),
        },
        _ => OAuthError::Misdirected {
            reason: format!(
                "the token endpoint's TLS certificate was refused ({detail}); check --token-url. \
                 {CA_HINT}"
            ),
        },
    }
}

/// The error and its sources on one line: reqwest's own message alone ("error sending request")
/// rarely says what happened.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

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

/// A lifetime in seconds: a JSON number (whole or not) or a numeric string, never negative.
fn seconds(v: Option<&Value>) -> Option<u64> {
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

fn scrub_error(e: OAuthError, secrets: &[&Secret]) -> OAuthError {
    match e {
        OAuthError::Transient {
            reason,
            retry_after,
        } => OAuthError::Transient {
            reason: scrub(&reason, secrets),
            retry_after,
        },
        OAuthError::Permanent { reason, code } => OAuthError::Permanent {
            reason: scrub(&reason, secrets),
            code,
        },
        OAuthError::Misdirected { reason } => OAuthError::Misdirected {
            reason: scrub(&reason, secrets),
        },
    }
}

/// Masks, in text that came from elsewhere, the secrets we sent and anything else shaped like a
/// token (a run of 40 or more token characters), so a server that echoes a request cannot put a
/// whole token into a log line.
pub fn scrub(text: &str, secrets: &[&Secret]) -> String {
    let mut out = text.to_owned();
    for s in secrets {
        if !s.is_blank() {
            out = out.replace(s.expose(), &s.masked());
        }
    }
    let is_token_char =
        |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~' | '+' | '/' | '=');
    let mut result = String::with_capacity(out.len());
    let mut run = String::new();
    for c in out.chars().chain(std::iter::once('\0')) {
        if c != '\0' && is_token_char(c) {
            run.push(c);
            continue;
        }
        if run.chars().count() >= 40 {
            result.push_str(&mask(&run));
        } else {
            result.push_str(&run);
        }
        run.clear();
        if c != '\0' {
            result.push(c);
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::UNIX_EPOCH;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn answer(status: u16, body: &str) -> Result<TokenGrant, OAuthError> {
        interpret_response(
            &Answer {
                status,
                location: Some("https://elsewhere.example/token"),
                retry_after: Some("12"),
                body: body.as_bytes(),
            },
            at(1000),
            at(1005),
        )
    }

    #[test]
    fn full_response_sets_every_owned_field() {
        let g = answer(
            200,
            r#"{"access_token":"sk-ant-oat01-new","refresh_token":"sk-ant-ort01-new",
                "expires_in":28800,"refresh_token_expires_in":2592000,"scope":"user:inference  user:profile"}"#,
        )
        .unwrap();
        assert_eq!(g.access_token.expose(), "sk-ant-oat01-new");
        assert_eq!(g.refresh_token.unwrap().expose(), "sk-ant-ort01-new");
        // Counted from the moment the request was sent, not when the answer arrived.
        assert_eq!(g.expires_at, (1000 + 28800) * 1000);
        assert_eq!(g.refresh_token_expires_at, Some((1000 + 2_592_000) * 1000));
        assert_eq!(g.scopes.unwrap(), ["user:inference", "user:profile"]);
    }

    #[test]
    fn minimal_response_uses_defaults() {
        let g = answer(200, r#"{"access_token":"a"}"#).unwrap();
        assert!(g.refresh_token.is_none());
        assert_eq!(g.expires_at, (1000 + 3600) * 1000);
        assert!(g.refresh_token_expires_at.is_none());
        assert!(g.scopes.is_none());
        let g = answer(200, r#"{"access_token":"a","expires_in":"60"}"#).unwrap();
        assert_eq!(g.expires_at, 1_060_000);
    }

    #[test]
    fn statuses_sort_into_transient_and_permanent() {
        let cases: &[(u16, &str, bool)] = &[
            (200, r#"{"token_type":"bearer"}"#, true),
            (200, r#"{"access_token":""}"#, true),
            (200, "<html>", true),
            (408, "", true),
            (429, "", true),
            (500, "", true),
            (503, r#"{"error":"overloaded"}"#, true),
            (599, "", true),
            (301, "", false),
            (307, "", false),
            (308, "", false),
            (
                400,
                r#"{"error":"invalid_grant","error_description":"Refresh token not found or invalid"}"#,
                false,
            ),
            (401, "", false),
            (403, "", false),
            (404, "", false),
        ];
        for (status, body, transient) in cases {
            let err = answer(*status, body).unwrap_err();
            assert_eq!(
                err.is_transient(),
                *transient,
                "HTTP {status} {body}: {err}"
            );
        }
    }

    #[test]
    fn errors_say_what_happened() {
        let err = answer(
            400,
            r#"{"error":"invalid_grant","error_description":"Refresh token not found"}"#,
        )
        .unwrap_err();
        assert_eq!(
            err,
            OAuthError::Permanent {
                reason: "the token endpoint refused the request: HTTP 400: invalid_grant (Refresh token not found)".into(),
                code: Some("invalid_grant".into()),
            }
        );
        let err = answer(301, "").unwrap_err().to_string();
        assert!(
            err.contains("--token-url https://elsewhere.example/token"),
            "{err}"
        );
        let err = answer(
            429,
            r#"{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}"#,
        )
        .unwrap_err();
        assert_eq!(
            err,
            OAuthError::Transient {
                reason: "the token endpoint answered HTTP 429: rate_limit_error (slow down)".into(),
                retry_after: Some(Duration::from_secs(12)),
            }
        );
    }

    #[test]
    fn scrub_masks_sent_secrets_and_token_shapes() {
        let rt = Secret::new("sk-ant-ort01-short-but-sent-XYZW");
        let long = "A".repeat(50);
        let text = format!(
            "echo sk-ant-ort01-short-but-sent-XYZW and {long}, id 9d1c250a-e61b-44d9-88ed-5944d1962f5e"
        );
        let out = scrub(&text, &[&rt]);
        assert!(!out.contains("short-but-sent"), "{out}");
        assert!(!out.contains(&long), "{out}");
        assert!(
            out.contains("9d1c250a-e61b-44d9-88ed-5944d1962f5e"),
            "a client id stays readable: {out}"
        );
    }

    #[test]
    fn certificate_refusals_are_sorted_by_whether_waiting_helps() {
        use rustls::CertificateError as C;
        let detail = "invalid peer certificate";
        for clock in [C::Expired, C::NotValidYet] {
            let e = certificate_refused(&clock, detail);
            assert!(e.is_transient(), "{clock:?}: {e}");
            assert!(e.to_string().contains("clock"), "{e}");
        }
        for setting in [C::UnknownIssuer, C::NotValidForName, C::BadSignature] {
            let e = certificate_refused(&setting, detail);
            assert!(
                matches!(e, OAuthError::Misdirected { .. }),
                "{setting:?}: {e}"
            );
            let text = e.to_string();
            assert!(
                text.contains("TLS certificate") && text.contains(CA_HINT),
                "{text}"
            );
        }
        assert!(
            certificate_refused(&C::UnknownIssuer, detail)
                .to_string()
                .contains("not trusted")
        );
    }

    proptest! {
        /// Any answer is a grant or a sorted error; never a panic.
        #[test]
        fn interpret_never_panics(status in 100u16..600, body in prop::collection::vec(any::<u8>(), 0..200), ra in proptest::option::of(".{0,30}")) {
            let _ = interpret_response(
                &Answer { status, location: None, retry_after: ra.as_deref(), body: &body },
                at(0), at(0));
        }

        /// Well-formed JSON responses with arbitrary field values never panic either.
        #[test]
        fn parse_grant_never_panics(expires in any::<i64>(), rt_expires in any::<f64>(), scope in ".{0,40}") {
            let mut map = Map::new();
            map.insert("access_token".into(), "x".into());
            map.insert("expires_in".into(), expires.into());
            map.insert("refresh_token_expires_in".into(), json!(rt_expires));
            map.insert("scope".into(), scope.into());
            let g = parse_grant(&map, SystemTime::now()).unwrap();
            prop_assert!(g.expires_at > 0);
        }

        #[test]
        fn scrub_never_leaks_long_tokens(token in "[A-Za-z0-9_-]{40,80}", before in "[ :,]{0,3}[a-z ]{0,10}", after in "[ :,]{1,3}[a-z ]{0,10}") {
            let out = scrub(&format!("{before}{token}{after}"), &[]);
            prop_assert!(!out.contains(&token));
        }
    }
}
