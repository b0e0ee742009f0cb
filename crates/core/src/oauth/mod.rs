//! The token endpoint client. It owns the wire format (JSON request bodies, the token response),
//! the HTTP policy (rustls, timeouts, no redirects, the User-Agent), and the sorting of every
//! failure into transient ("may work if retried") or permanent ("will not"). It never retries by
//! itself and never touches the file: the caller decides, because only the caller knows whether
//! a refresh token may still be spent.

use std::fmt;
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

use crate::credentials::TokenUpdate;
use crate::secret::Secret;
use crate::settings::Url;

mod probe;
mod response;
mod transport;

pub use probe::{PROBE_TIMEOUT, ServerDate, probe_url, server_date};
pub use response::{Answer, interpret_response, parse_grant};
pub(crate) use transport::error_chain;
pub use transport::{CA_HINT, scrub};
use transport::{scrub_error, transport_error};

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
        /// The OAuth error code when the server sent one (`invalid_grant`, ...): the flat
        /// `{"error": "invalid_grant"}` of RFC 6749, or the `error.type` of Anthropic's
        /// `{"type": "error", "error": {"type": "invalid_client", ...}}`.
        code: Option<String>,
        /// What it says, and what the caller needs to say what to check (boxed: every error
        /// type that holds an `OAuthError` stays small).
        refusal: Box<Refusal>,
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
            OAuthError::Transient { reason, .. } | OAuthError::Misdirected { reason } => {
                f.write_str(reason)
            }
            OAuthError::Permanent { refusal, .. } => f.write_str(&refusal.reason),
        }
    }
}

impl std::error::Error for OAuthError {}

/// A refusal beyond its OAuth code: the message, and what tells a misdirected request (a 404,
/// a proxy's page) from a refused grant.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Refusal {
    pub reason: String,
    pub status: u16,
    /// `error_description`, or the nested `error.message`: escaped, short, one line.
    pub detail: Option<String>,
    /// The body is an HTML page (a proxy's or a web server's), not JSON.
    pub html: bool,
}

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
        .user_agent(header_value(user_agent))
        .build()
}

/// The User-Agent as a header value. From bytes, not `&str`: `HeaderValue::from_str` takes
/// visible ASCII only, and a User-Agent in UTF-8 is a setting the user may fairly give. Control
/// characters are refused when the setting is read; any that reach here (a library caller)
/// become spaces, rather than making every request fail to build.
fn header_value(text: &str) -> reqwest::header::HeaderValue {
    let clean: String = text
        .chars()
        .map(|c| if c.is_control() && c != '\t' { ' ' } else { c })
        .collect();
    // Every byte is now tab, >= 0x20 and not DEL (non-ASCII UTF-8 bytes are >= 0x80): exactly
    // what `from_bytes` accepts.
    reqwest::header::HeaderValue::from_bytes(clean.as_bytes())
        .expect("control characters were replaced")
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
        let location = response
            .headers()
            .get(reqwest::header::LOCATION)
            .map(|v| resolve_location(&self.token_url, v.as_bytes()));
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

/// A redirect's `Location` as the user could use it: resolved against the token URL (a
/// relative `/v1/oauth/token2` names a URL on the same host), its bytes read as UTF-8 even when
/// they are not ASCII (a server may send them raw). What does not resolve is kept as sent.
fn resolve_location(token_url: &Url, bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    match token_url.join(text) {
        Ok(mut url) => {
            // A relative Location inherits the token URL's user:password; a message must not
            // print the user's own password back at them.
            let _ = url.set_password(None);
            let _ = url.set_username("");
            url.to_string()
        }
        Err(_) => text.to_owned(),
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

#[cfg(test)]
mod tests;
