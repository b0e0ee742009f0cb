//! The loopback upstream both programs talk to: Anthropic as far as this test needs it. Claude
//! Code reaches it through `real-claude-code`'s TLS-terminating proxy (every request then carries
//! `X-Forwarded-Host`); claude-tokend reaches its token endpoint directly (`--token-url`), so a
//! request's origin is plain from that header alone.
//!
//! It answers:
//! - `POST /v1/oauth/token`: the refresh grant, single-use refresh tokens rotated on every
//!   success; the new access token becomes the only one `/v1/messages` accepts (the old one is
//!   refused from then on, as a real server that revoked it would);
//! - `GET /api/oauth/profile`: 404 (Claude Code tolerates it);
//! - `POST /v1/messages`: 401 `authentication_error` unless the bearer is the current access
//!   token; otherwise a message (server-sent events when `"stream": true`, plain JSON
//!   otherwise) whose text carries a per-server marker, or, once, a tool call ([`tool_turn`]);
//! - 404 for anything else.
//!
//! Every request is recorded ([`Seen`]) with the status it was answered. Tokens are fake.
//!
//! [`tool_turn`]: Upstream::tool_turn

use std::fmt;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use claude_tokend_e2e::{fake_access, fake_refresh, random_alnum};
use serde_json::{Value, json};

/// One request the upstream received, as far as the test looks at it.
#[derive(Clone)]
pub struct Seen {
    pub method: String,
    /// Without the query string.
    pub path: String,
    /// The host Claude Code meant (set by the proxy); `None` for a direct request.
    pub forwarded_host: Option<String>,
    /// The `Authorization: Bearer` token, if any.
    pub bearer: Option<String>,
    /// `grant_type` of a token request.
    pub grant_type: Option<String>,
    /// A messages request that carries a tool result (the turn after a tool call).
    pub tool_result: bool,
    /// The status it was answered with.
    pub status: u16,
}

/// One line per request in failure messages, tokens cut to their last characters (fake ones,
/// but a whole list of them is unreadable).
impl fmt::Debug for Seen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tail = |t: &str| {
            let n = t.chars().count().saturating_sub(6);
            format!("…{}", t.chars().skip(n).collect::<String>())
        };
        write!(f, "{} {}", self.method, self.path)?;
        match &self.forwarded_host {
            Some(h) => write!(f, " (Claude Code, for {h})")?,
            None => write!(f, " (direct)")?,
        }
        if let Some(b) = &self.bearer {
            write!(f, " bearer {}", tail(b))?;
        }
        if let Some(g) = &self.grant_type {
            write!(f, " grant_type={g}")?;
        }
        if self.tool_result {
            write!(f, " with a tool result")?;
        }
        write!(f, " -> {}", self.status)
    }
}

impl Seen {
    /// Came through the proxy, that is from Claude Code.
    pub fn by_claude_code(&self) -> bool {
        self.forwarded_host.is_some()
    }

    pub fn is_token_request(&self) -> bool {
        self.method == "POST" && self.path == TOKEN_PATH
    }

    pub fn is_messages(&self) -> bool {
        self.method == "POST" && self.path == MESSAGES_PATH
    }
}

pub const TOKEN_PATH: &str = "/v1/oauth/token";
pub const MESSAGES_PATH: &str = "/v1/messages";

/// What the first message answers with a tool call, and what runs before that answer is sent.
struct ToolTurn {
    file: PathBuf,
    before_answer: Box<dyn FnOnce() + Send>,
}

struct Tokens {
    /// The one access token `/v1/messages` accepts.
    access: String,
    /// The one refresh token the token endpoint accepts (single-use).
    refresh: String,
}

struct Shared {
    tokens: Mutex<Tokens>,
    seen: Mutex<Vec<Seen>>,
    tool_turn: Mutex<Option<ToolTurn>>,
    marker: String,
    stop: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking connection thread must not take the whole server down with it.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The upstream, on 127.0.0.1; stops on drop.
pub struct Upstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl Upstream {
    /// An upstream for which `access` is the valid access token and `refresh` the valid refresh
    /// token.
    pub fn start(access: &str, refresh: &str) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let shared = Arc::new(Shared {
            tokens: Mutex::new(Tokens {
                access: access.to_owned(),
                refresh: refresh.to_owned(),
            }),
            seen: Mutex::new(Vec::new()),
            tool_turn: Mutex::new(None),
            marker: format!("loopback-upstream-says-{}", random_alnum(12)),
            stop: AtomicBool::new(false),
        });
        let s = Arc::clone(&shared);
        let acceptor = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = conn else { continue };
                let s = Arc::clone(&s);
                std::thread::spawn(move || serve(stream, &s));
            }
        });
        Upstream {
            addr,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// `http://127.0.0.1:PORT`, for the proxy.
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The token endpoint, for claude-tokend.
    pub fn token_url(&self) -> String {
        format!("{}{TOKEN_PATH}", self.base())
    }

    /// The text every message it answers carries.
    pub fn marker(&self) -> &str {
        &self.shared.marker
    }

    /// The access token it accepts now.
    pub fn access(&self) -> String {
        lock(&self.shared.tokens).access.clone()
    }

    /// The refresh token it accepts now.
    pub fn refresh(&self) -> String {
        lock(&self.shared.tokens).refresh.clone()
    }

    /// Every request so far, in the order they were answered.
    pub fn seen(&self) -> Vec<Seen> {
        lock(&self.shared.seen).clone()
    }

    /// The first messages request (one without a tool result) is answered with a call of
    /// Claude Code's `Read` tool on `file`, and `before_answer` runs (on the connection's thread)
    /// after its bearer was accepted and before the answer is sent: the session is then in
    /// the middle of a turn, and its next request is the tool result.
    pub fn tool_turn(&self, file: PathBuf, before_answer: impl FnOnce() + Send + 'static) {
        *lock(&self.shared.tool_turn) = Some(ToolTurn {
            file,
            before_answer: Box::new(before_answer),
        });
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
    }
}

/// A request off the wire: method, target, headers (names lower-cased), body.
struct Wire {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Wire {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one request. Both clients (the proxy's `http.client` and claude-tokend's reqwest)
/// send a Content-Length with every body, so that is all it reads.
fn read_request(stream: &TcpStream) -> Option<Wire> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_owned();
    let target = parts.next()?.to_owned();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).ok()? == 0 {
            return None;
        }
        let h = h.trim_end_matches(['\r', '\n']);
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
    }
    let len = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    reader.read_exact(&mut body).ok()?;
    Some(Wire {
        method,
        target,
        headers,
        body,
    })
}

/// An answer: status, content type, body.
struct Answer {
    status: u16,
    content_type: &'static str,
    body: String,
}

impl Answer {
    fn json(status: u16, v: &Value) -> Answer {
        Answer {
            status,
            content_type: "application/json",
            body: v.to_string(),
        }
    }
}

fn write_answer(mut stream: TcpStream, a: &Answer) {
    let reason = match a.status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        _ => "Not Found",
    };
    let head = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        a.status,
        a.content_type,
        a.body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(a.body.as_bytes());
    let _ = stream.flush();
    let _ = stream.shutdown(Shutdown::Write);
}

fn serve(stream: TcpStream, shared: &Shared) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let Some(wire) = read_request(&stream) else {
        return;
    };
    if shared.stop.load(Ordering::SeqCst) {
        return;
    }
    let body: Value = serde_json::from_slice(&wire.body).unwrap_or(Value::Null);
    let path = wire.target.split('?').next().unwrap_or_default().to_owned();
    let mut seen = Seen {
        method: wire.method.clone(),
        path,
        forwarded_host: wire.header("x-forwarded-host").map(str::to_owned),
        bearer: wire
            .header("authorization")
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_owned),
        grant_type: body
            .get("grant_type")
            .and_then(Value::as_str)
            .map(str::to_owned),
        tool_result: has_tool_result(&body),
        status: 0,
    };
    let answer = if seen.is_token_request() {
        token_answer(shared, &body)
    } else if seen.is_messages() {
        messages_answer(shared, &seen, &body)
    } else {
        // The profile lookup included: 404 is what the tool's header says Claude Code
        // tolerates, and what the test relies on nothing more than.
        Answer::json(
            404,
            &json!({"type": "error", "error": {"type": "not_found_error", "message": "not here"}}),
        )
    };
    seen.status = answer.status;
    lock(&shared.seen).push(seen);
    write_answer(stream, &answer);
}

/// The refresh grant: the presented refresh token must be the current one; a new pair replaces
/// both tokens.
fn token_answer(shared: &Shared, body: &Value) -> Answer {
    if body.get("grant_type").and_then(Value::as_str) != Some("refresh_token") {
        return Answer::json(400, &json!({"error": "unsupported_grant_type"}));
    }
    let mut tokens = lock(&shared.tokens);
    if body.get("refresh_token").and_then(Value::as_str) != Some(tokens.refresh.as_str()) {
        return Answer::json(
            400,
            &json!({"error": "invalid_grant", "error_description": "Refresh token not found or invalid"}),
        );
    }
    tokens.access = fake_access();
    tokens.refresh = fake_refresh();
    Answer::json(
        200,
        &json!({
            "token_type": "Bearer",
            "access_token": tokens.access,
            "refresh_token": tokens.refresh,
            "expires_in": 8 * 3600,
            "scope": "user:inference user:profile user:sessions:claude_code",
        }),
    )
}

fn has_tool_result(body: &Value) -> bool {
    let blocks = |m: &Value| m.get("content").and_then(Value::as_array).cloned();
    body.get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(blocks)
        .flatten()
        .any(|b| b.get("type").and_then(Value::as_str) == Some("tool_result"))
}

fn messages_answer(shared: &Shared, seen: &Seen, body: &Value) -> Answer {
    // The bearer is checked as the request arrives: a request accepted now is answered even
    // if the token is replaced while it is being handled (as a real API would).
    if seen.bearer.as_deref() != Some(lock(&shared.tokens).access.as_str()) {
        return Answer::json(
            401,
            &json!({"type": "error", "error": {"type": "authentication_error",
                                               "message": "Invalid bearer token"}}),
        );
    }
    let stream = body.get("stream").and_then(Value::as_bool) == Some(true);
    let turn = if seen.tool_result {
        None
    } else {
        lock(&shared.tool_turn).take()
    };
    let content = match turn {
        Some(t) => {
            (t.before_answer)();
            json!({"type": "tool_use", "id": "toolu_01interop", "name": "Read",
                   "input": {"file_path": t.file}})
        }
        None => json!({"type": "text", "text": shared.marker}),
    };
    message(&content, stream)
}

/// A complete assistant message holding one content block, as JSON or as the event stream the
/// Messages API sends for `"stream": true`.
fn message(content: &Value, stream: bool) -> Answer {
    let stop_reason = if content["type"] == "tool_use" {
        "tool_use"
    } else {
        "end_turn"
    };
    let usage = json!({"input_tokens": 1, "output_tokens": 1});
    if !stream {
        return Answer::json(
            200,
            &json!({"id": "msg_interop", "type": "message", "role": "assistant", "model": "m",
                    "content": [content], "stop_reason": stop_reason, "stop_sequence": null,
                    "usage": usage}),
        );
    }
    // The block starts empty and its content comes as one delta, as the API streams it.
    let (start, delta) = if content["type"] == "tool_use" {
        let mut start = content.clone();
        start["input"] = json!({});
        let delta =
            json!({"type": "input_json_delta", "partial_json": content["input"].to_string()});
        (start, delta)
    } else {
        (
            json!({"type": "text", "text": ""}),
            json!({"type": "text_delta", "text": content["text"]}),
        )
    };
    let events = [
        json!({"type": "message_start",
               "message": {"id": "msg_interop", "type": "message", "role": "assistant",
                           "model": "m", "content": [], "stop_reason": null,
                           "stop_sequence": null, "usage": usage}}),
        json!({"type": "content_block_start", "index": 0, "content_block": start}),
        json!({"type": "content_block_delta", "index": 0, "delta": delta}),
        json!({"type": "content_block_stop", "index": 0}),
        json!({"type": "message_delta",
               "delta": {"stop_reason": stop_reason, "stop_sequence": null},
               "usage": {"output_tokens": 1}}),
        json!({"type": "message_stop"}),
    ];
    let body = events
        .iter()
        .map(|e| format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap_or("")))
        .collect();
    Answer {
        status: 200,
        content_type: "text/event-stream",
        body,
    }
}
