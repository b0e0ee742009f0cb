//! The token endpoint: [`TokenServer`], a real HTTP/1.1 server on a loopback port that answers
//! scripted [`Reply`]s or, by default, acts as a realistic OAuth server (single-use refresh
//! tokens rotated on every success, one-time authorization codes checked against PKCE), and
//! records every [`Request`]. It also plays the API's profile lookup ([`PROFILE_PATH`]), which
//! `login` makes after the exchange, kept apart from the token endpoint's requests and script.
//! The wire format lives in `http`, the OAuth answers in `oauth`. Never runs the binary.

mod http;
mod oauth;

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::basics::now_ms;
use crate::home::Login;

/// The path part of [`TokenServer::url`].
pub const TOKEN_PATH: &str = "/v1/oauth/token";

/// The profile lookup under the API base ([`TokenServer::base`]), as Claude Code makes it.
pub const PROFILE_PATH: &str = "/api/oauth/profile";

/// A scripted HTTP answer.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// Waited before answering (on top of the server-wide delay).
    pub delay: Duration,
}

impl Reply {
    /// An answer with a JSON body.
    pub fn json(status: u16, body: &Value) -> Reply {
        Reply {
            status,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: body.to_string(),
            delay: Duration::ZERO,
        }
    }

    /// An answer with a raw body and no Content-Type.
    pub fn raw(status: u16, body: impl Into<String>) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: body.into(),
            delay: Duration::ZERO,
        }
    }

    /// An Anthropic-style error body for a status (429, 5xx...).
    pub fn error(status: u16) -> Reply {
        Reply::json(
            status,
            &json!({"type": "error", "error": {"type": "overloaded_error", "message": "try later"}}),
        )
    }

    /// The OAuth refusal of a spent or unknown refresh token.
    pub fn invalid_grant() -> Reply {
        Reply::json(
            400,
            &json!({"error": "invalid_grant", "error_description": "Refresh token not found or invalid"}),
        )
    }

    /// A profile answer shaped like the API's: the account with its email (`account.email`, the
    /// key Claude Code reads) and the organization's type and rate-limit tier.
    pub fn profile(email: &str, organization_type: &str, rate_limit_tier: &str) -> Reply {
        Reply::json(
            200,
            &json!({
                "account": {"uuid": "00000000-0000-4000-8000-000000000001", "email": email,
                            "display_name": "Test User"},
                "organization": {"uuid": "00000000-0000-4000-8000-000000000002",
                                 "organization_type": organization_type,
                                 "rate_limit_tier": rate_limit_tier},
            }),
        )
    }

    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn delay(mut self, d: Duration) -> Reply {
        self.delay = d;
        self
    }
}

/// One request the server received.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// Names lower-cased, in arrival order.
    pub headers: Vec<(String, String)>,
    /// The body parsed as JSON (`Null` when it is not JSON; see `raw_body`).
    pub body: Value,
    pub raw_body: String,
    /// When the whole request had arrived, epoch ms.
    pub received_ms: i64,
}

impl Request {
    /// A header's value, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The refresh token the body carried.
    pub fn refresh_token(&self) -> Option<&str> {
        self.body.get("refresh_token").and_then(Value::as_str)
    }
}

/// What the server puts in a successful refresh answer.
#[derive(Clone, Debug)]
pub struct GrantPolicy {
    /// `expires_in` (None: left out).
    pub expires_in: Option<u64>,
    /// `refresh_token_expires_in` (None: left out).
    pub refresh_token_expires_in: Option<u64>,
    /// `scope` (None: left out).
    pub scope: Option<String>,
    /// Issue a new refresh token (and make the old one invalid). False: send none, keep the old
    /// one valid.
    pub rotate: bool,
}

impl Default for GrantPolicy {
    fn default() -> Self {
        GrantPolicy {
            expires_in: Some(8 * 3600),
            refresh_token_expires_in: Some(30 * 86_400),
            scope: Some("user:inference user:profile user:sessions:claude_code user:mcp".into()),
            rotate: true,
        }
    }
}

/// Tokens the server handed out.
#[derive(Clone, Debug)]
pub struct Issued {
    pub access: String,
    pub refresh: Option<String>,
}

#[derive(Default)]
struct Shared {
    requests: Mutex<Vec<Request>>,
    script: Mutex<VecDeque<Reply>>,
    sticky: Mutex<Option<Reply>>,
    valid: Mutex<Vec<String>>,
    codes: Mutex<Vec<AuthCode>>,
    policy: Mutex<GrantPolicy>,
    issued: Mutex<Vec<Issued>>,
    delay: Mutex<Duration>,
    profile: Mutex<Option<Reply>>,
    profile_requests: Mutex<Vec<Request>>,
    stop: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking connection thread must not take the whole server down with it.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// An authorization code the server will exchange once, and what the exchange must carry.
#[derive(Clone, Debug)]
pub struct AuthCode {
    pub code: String,
    /// The `code_challenge` from the authorize URL: SHA-256 of the exchange's `code_verifier`.
    pub challenge: String,
    pub state: String,
    pub redirect_uri: String,
    pub client_id: String,
}

/// A real HTTP/1.1 token endpoint on a loopback port. Scripted replies ([`TokenServer::push`])
/// are used first, then a sticky one ([`TokenServer::always`]) if set; otherwise it acts as a
/// rotating OAuth server: a valid refresh token gets a new pair, once (it is single-use), and
/// anything else gets `invalid_grant`. Every request is recorded.
pub struct TokenServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl TokenServer {
    /// A server on 127.0.0.1 that knows no refresh token yet.
    pub fn start() -> TokenServer {
        TokenServer::start_on(IpAddr::V4(Ipv4Addr::LOCALHOST))
    }

    /// A server on 127.0.0.1 for which `login`'s refresh token is valid.
    pub fn for_login(login: &Login) -> TokenServer {
        let s = TokenServer::start();
        s.accept_refresh(&login.refresh);
        s
    }

    /// A server listening on `ip` (port chosen by the system).
    pub fn start_on(ip: IpAddr) -> TokenServer {
        let listener =
            TcpListener::bind((ip, 0)).unwrap_or_else(|e| panic!("binding {ip}:0 failed: {e}"));
        let addr = listener.local_addr().expect("local address");
        let shared = Arc::new(Shared::default());
        let s = Arc::clone(&shared);
        let acceptor = std::thread::Builder::new()
            .name(format!("token-server-{}", addr.port()))
            .spawn(move || {
                for conn in listener.incoming() {
                    if s.stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = conn else { continue };
                    let s = Arc::clone(&s);
                    let _ = std::thread::Builder::new()
                        .name("token-server-conn".into())
                        .spawn(move || serve(stream, &s));
                }
            })
            .expect("spawning the accept thread");
        TokenServer {
            addr,
            shared,
            acceptor: Some(acceptor),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://IP:PORT`.
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://IP:PORT/v1/oauth/token`.
    pub fn url(&self) -> String {
        format!("{}{TOKEN_PATH}", self.base())
    }

    /// Makes a refresh token valid (single-use, as real ones are).
    pub fn accept_refresh(&self, token: &str) {
        lock(&self.shared.valid).push(token.to_owned());
    }

    /// Makes an authorization code exchangeable (once), with the PKCE challenge and the
    /// parameters the exchange must repeat.
    pub fn allow_code(&self, code: AuthCode) {
        lock(&self.shared.codes).push(code);
    }

    /// Queues a scripted reply; queued replies are used first, in order.
    pub fn push(&self, reply: Reply) {
        lock(&self.shared.script).push_back(reply);
    }

    /// Answers every request (once the queue is empty) with this reply.
    pub fn always(&self, reply: Reply) {
        *lock(&self.shared.sticky) = Some(reply);
    }

    /// A delay before every answer (requests are still recorded on arrival).
    pub fn set_delay(&self, d: Duration) {
        *lock(&self.shared.delay) = d;
    }

    /// What successful refreshes answer.
    pub fn set_policy(&self, p: GrantPolicy) {
        *lock(&self.shared.policy) = p;
    }

    /// Requests to the token endpoint (and any other path but [`PROFILE_PATH`]).
    pub fn requests(&self) -> Vec<Request> {
        lock(&self.shared.requests).clone()
    }

    /// Answers every profile lookup with this reply. Until it is set, the lookup is answered
    /// 404, like an API that does not know the path: a login then saves no plan.
    pub fn set_profile(&self, reply: Reply) {
        *lock(&self.shared.profile) = Some(reply);
    }

    /// The profile lookups received, headers included.
    pub fn profile_requests(&self) -> Vec<Request> {
        lock(&self.shared.profile_requests).clone()
    }

    pub fn count(&self) -> usize {
        lock(&self.shared.requests).len()
    }

    /// Every token pair handed out, in order.
    pub fn issued(&self) -> Vec<Issued> {
        lock(&self.shared.issued).clone()
    }

    /// The last token pair handed out (panics when there is none).
    pub fn last_issued(&self) -> Issued {
        self.issued()
            .pop()
            .expect("the server has not issued any tokens")
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let wake = SocketAddr::new(
            if self.addr.ip().is_unspecified() {
                IpAddr::V4(Ipv4Addr::LOCALHOST)
            } else {
                self.addr.ip()
            },
            self.addr.port(),
        );
        let _ = TcpStream::connect_timeout(&wake, Duration::from_secs(1));
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
    }
}

fn serve(stream: TcpStream, shared: &Shared) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
    let Some(http::Wire {
        method,
        path,
        headers,
        body,
    }) = http::read_request(&stream)
    else {
        return;
    };
    if shared.stop.load(Ordering::SeqCst) {
        return;
    }
    let raw_body = String::from_utf8_lossy(&body).into_owned();
    let request = Request {
        method,
        path,
        headers,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        raw_body,
        received_ms: now_ms(),
    };
    // The profile lookup is the API's, not the token endpoint's: its own record and reply, so
    // the token endpoint's counts and script mean what they meant before login looked it up.
    if request.path.split('?').next() == Some(PROFILE_PATH) {
        lock(&shared.profile_requests).push(request);
        let reply = lock(&shared.profile).clone().unwrap_or_else(|| {
            Reply::json(
                404,
                &json!({"type": "error", "error": {"type": "not_found_error"}}),
            )
        });
        std::thread::sleep(reply.delay);
        http::write_reply(stream, &reply);
        return;
    }
    lock(&shared.requests).push(request.clone());
    let reply = {
        let scripted = lock(&shared.script).pop_front();
        let sticky = || lock(&shared.sticky).clone();
        scripted
            .or_else(sticky)
            .unwrap_or_else(|| oauth::oauth_reply(shared, &request))
    };
    let wait = *lock(&shared.delay) + reply.delay;
    let until = Instant::now() + wait;
    while Instant::now() < until && !shared.stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(10).min(until - Instant::now()));
    }
    http::write_reply(stream, &reply);
}

/// An address of this machine that is not loopback (the one the default route leaves from), if
/// there is one. No packet is sent: connecting a UDP socket only picks a route.
pub fn non_loopback_ip() -> Option<IpAddr> {
    let s = UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("192.0.2.1:9").ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}
