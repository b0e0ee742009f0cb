//! Harness for the black-box end-to-end suite: the built `claude-tokend` binary, run as a child
//! process in a throwaway HOME, against a real HTTP/1.1 token endpoint on 127.0.0.1.
//!
//! A few honest helpers, std only:
//! - [`bin`] finds the binary; [`Cmd`] runs it with a clean environment and a timeout;
//! - [`TempHome`] is a temporary HOME with a credentials file in it;
//! - [`Login`] and [`typical_doc`] build credentials with fake tokens;
//! - [`TokenServer`] is a scripted, otherwise realistic (single-use, rotating) OAuth endpoint;
//! - [`Out`] holds a run's exit code and output and asserts on it, printing both on failure.

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::fmt::{Debug, Display};
use std::fs::{self, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};

// ---------------------------------------------------------------------------------------------
// The binary

/// The `claude-tokend` binary under test: `$CLAUDE_TOKEND_BIN` when set, else the one cargo
/// built next to this test executable (tests live in `target/<profile>/deps/`).
pub fn bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CLAUDE_TOKEND_BIN") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "CLAUDE_TOKEND_BIN={} is not a file",
            p.display()
        );
        return p;
    }
    let exe = std::env::current_exe().expect("the test executable's own path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test executable lives in target/<profile>/deps/");
    let p = dir.join("claude-tokend");
    assert!(
        p.is_file(),
        "the claude-tokend binary is not at {}: build it with `cargo build -p claude-tokend` \
         or run `cargo test --workspace` (or point CLAUDE_TOKEND_BIN at it)",
        p.display()
    );
    p
}

/// The default User-Agent the binary sends: the workspace shares one version.
pub fn default_user_agent() -> String {
    format!("claude-tokend/{}", env!("CARGO_PKG_VERSION"))
}

/// The contract's default client id.
pub const DEFAULT_CLIENT_ID: &str = "9d1c250a-e61b-44d9-88ed-5944d1962f5e";

/// The path part of [`TokenServer::url`].
pub const TOKEN_PATH: &str = "/v1/oauth/token";

// ---------------------------------------------------------------------------------------------
// Randomness, time, fake tokens

/// Random-ish 64 bits from std alone: a freshly keyed SipHash over a counter, the clock and the
/// pid. Plenty for unique names and fake tokens; nothing here needs to be unpredictable.
pub fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.write_u32(std::process::id());
    h.finish()
}

/// `n` random ASCII letters and digits.
pub fn random_alnum(n: usize) -> String {
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    (0..n)
        .map(|_| CHARS[(random_u64() % CHARS.len() as u64) as usize] as char)
        .collect()
}

/// A fake access token, shaped like Claude Code's (never a real one).
pub fn fake_access() -> String {
    format!("sk-ant-oat01-{}", random_alnum(48))
}

/// A fake refresh token, shaped like Claude Code's (never a real one).
pub fn fake_refresh() -> String {
    format!("sk-ant-ort01-{}", random_alnum(48))
}

/// Now, in Unix epoch milliseconds (the unit of `expiresAt`).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_millis() as i64
}

// ---------------------------------------------------------------------------------------------
// Credentials documents

/// The scopes a typical Claude Code login stores.
pub const SCOPES: [&str; 3] = [
    "user:inference",
    "user:profile",
    "user:sessions:claude_code",
];

/// The fields of `claudeAiOauth` the program owns; everything else must survive a rewrite.
pub const OWNED: [&str; 5] = [
    "accessToken",
    "refreshToken",
    "expiresAt",
    "refreshTokenExpiresAt",
    "scopes",
];

/// A login: the two tokens and the access token's expiry.
#[derive(Clone, Debug)]
pub struct Login {
    pub access: String,
    pub refresh: String,
    /// Epoch milliseconds.
    pub expires_at: i64,
}

impl Login {
    /// Fresh fake tokens whose access token expires `secs` seconds from now (negative: ago).
    pub fn expiring_in(secs: i64) -> Login {
        Login {
            access: fake_access(),
            refresh: fake_refresh(),
            expires_at: now_ms() + secs * 1000,
        }
    }

    /// Not expired, but within the default 15-minute lead: `--once` must refresh it.
    pub fn due() -> Login {
        Login::expiring_in(120)
    }

    /// Valid for hours: `--once` must leave it alone.
    pub fn fresh() -> Login {
        Login::expiring_in(8 * 3600)
    }

    /// Expired an hour ago.
    pub fn expired() -> Login {
        Login::expiring_in(-3600)
    }

    /// A typical credentials document holding this login.
    pub fn doc(&self) -> Value {
        typical_doc(self)
    }

    /// This login's two tokens, for leak checks.
    pub fn secrets(&self) -> Vec<String> {
        vec![self.access.clone(), self.refresh.clone()]
    }
}

/// A credentials document as current Claude Code writes it, plus keys that do not exist yet
/// (at the top level, first and last, and inside `claudeAiOauth`), so a rewrite that drops or
/// reorders anything shows.
pub fn typical_doc(login: &Login) -> Value {
    json!({
        "formatVersionFromTheFuture": 3,
        "claudeAiOauth": {
            "accessToken": login.access,
            "refreshToken": login.refresh,
            "expiresAt": login.expires_at,
            "scopes": SCOPES,
            "subscriptionType": "max",
            "rateLimitTier": "default_claude_max_20x",
            "unknownOauthField": {"nested": [1, "two", null, true], "big": 12345678901234567890u64}
        },
        "mcpOAuth": {
            "github|5f1c9a3e2b": {
                "serverName": "github",
                "serverUrl": "https://mcp.example.test/mcp",
                "accessToken": "mcp-access-not-ours-1234",
                "refreshToken": "mcp-refresh-not-ours-5678",
                "expiresAt": 1_756_000_000_000i64,
                "clientId": "mcp-client"
            }
        },
        "unknownTopLevel": {"keep": ["me", 1.5, {"deep": "yes"}]}
    })
}

/// A copy of `doc` with the owned fields of `claudeAiOauth` removed: what a refresh must leave
/// exactly as it was.
pub fn without_owned(doc: &Value) -> Value {
    let mut doc = doc.clone();
    if let Some(oauth) = doc.get_mut("claudeAiOauth").and_then(Value::as_object_mut) {
        for k in OWNED {
            oauth.remove(k);
        }
    }
    doc
}

/// The keys of a JSON object, in order (empty for anything else).
pub fn keys(v: &Value) -> Vec<String> {
    v.as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

/// `claudeAiOauth` of a document (panics with the document when absent).
pub fn oauth(doc: &Value) -> &Map<String, Value> {
    doc.get("claudeAiOauth")
        .and_then(Value::as_object)
        .unwrap_or_else(|| panic!("no claudeAiOauth object in {doc:#}"))
}

// ---------------------------------------------------------------------------------------------
// Files

/// Writes `doc` as Claude Code would (pretty JSON), creating missing directories 0700 and the
/// file 0600.
pub fn write_creds_at(path: &Path, doc: &Value) {
    let mut text = serde_json::to_string_pretty(doc).expect("JSON");
    text.push('\n');
    write_raw_at(path, text.as_bytes());
}

/// Writes raw bytes as the credentials file (mode 0600), creating missing directories 0700.
pub fn write_raw_at(path: &Path, bytes: &[u8]) {
    if let Some(dir) = path.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    }
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
    f.write_all(bytes).expect("writing the credentials file");
    f.set_permissions(fs::Permissions::from_mode(0o600))
        .expect("chmod 600");
}

/// Reads a JSON file (panics with the text when it does not parse).
pub fn read_json(path: &Path) -> Value {
    let text =
        fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not JSON ({e}):\n{text}", path.display()))
}

/// The names in a directory, sorted; empty when the directory does not exist.
pub fn list_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = match fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| {
                e.expect("directory entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

/// The permission bits of a file (following symlinks).
pub fn mode_of(path: &Path) -> u32 {
    fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// Everything that tells whether a file was touched: bytes, mtime (ns), inode (a rename changes
/// it) and mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileState {
    pub bytes: Vec<u8>,
    pub mtime: SystemTime,
    pub inode: u64,
    pub mode: u32,
}

impl FileState {
    /// The state of the file at `path` (following symlinks).
    pub fn of(path: &Path) -> FileState {
        let meta = fs::metadata(path).unwrap_or_else(|e| panic!("stat {}: {e}", path.display()));
        FileState {
            bytes: fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display())),
            mtime: meta.modified().expect("mtime"),
            inode: meta.ino(),
            mode: meta.permissions().mode() & 0o7777,
        }
    }
}

/// A unique temporary directory used as HOME, removed on drop.
pub struct TempHome {
    root: PathBuf,
}

impl Default for TempHome {
    fn default() -> Self {
        TempHome::new()
    }
}

impl TempHome {
    pub fn new() -> TempHome {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "claude-tokend-e2e-{}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            random_alnum(8)
        );
        let root = std::env::temp_dir().join(name);
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&root)
            .unwrap_or_else(|e| panic!("creating {}: {e}", root.display()));
        TempHome { root }
    }

    /// The HOME directory itself.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// `HOME/.claude`.
    pub fn claude_dir(&self) -> PathBuf {
        self.root.join(".claude")
    }

    /// `HOME/.claude/.credentials.json`.
    pub fn creds_path(&self) -> PathBuf {
        self.claude_dir().join(".credentials.json")
    }

    /// Writes the default credentials file (`.claude` 0700, file 0600).
    pub fn write_creds(&self, doc: &Value) {
        write_creds_at(&self.creds_path(), doc);
    }

    /// Writes raw bytes as the default credentials file.
    pub fn write_raw(&self, bytes: &[u8]) {
        write_raw_at(&self.creds_path(), bytes);
    }

    pub fn read_creds(&self) -> Value {
        read_json(&self.creds_path())
    }

    pub fn raw_bytes(&self) -> Vec<u8> {
        fs::read(self.creds_path()).expect("reading the credentials file")
    }

    pub fn mtime(&self) -> SystemTime {
        fs::metadata(self.creds_path())
            .and_then(|m| m.modified())
            .expect("mtime of the credentials file")
    }

    pub fn mode(&self) -> u32 {
        mode_of(&self.creds_path())
    }

    pub fn state(&self) -> FileState {
        FileState::of(&self.creds_path())
    }

    /// File names in `HOME/.claude`, sorted (to look for stray temp files).
    pub fn list_dir(&self) -> Vec<String> {
        list_names(&self.claude_dir())
    }
}

impl Drop for TempHome {
    fn drop(&mut self) {
        // Tests may have taken permissions away; give them back so removal works as non-root.
        fn restore(dir: &Path) {
            let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
            if let Ok(rd) = fs::read_dir(dir) {
                for e in rd.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        restore(&e.path());
                    }
                }
            }
        }
        restore(&self.root);
        let _ = fs::remove_dir_all(&self.root);
    }
}

/// The names a credentials directory may hold after a run besides the file itself: the
/// permanent sibling lock file (`<file>.lock`).
pub fn allowed_siblings(file_name: &str) -> Vec<String> {
    vec![file_name.to_owned(), format!("{file_name}.lock")]
}

// ---------------------------------------------------------------------------------------------
// The token endpoint

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

    pub fn requests(&self) -> Vec<Request> {
        lock(&self.shared.requests).clone()
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

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        301 => "Moved Permanently",
        302 => "Found",
        307 => "Temporary Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        408 => "Request Timeout",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Whatever",
    }
}

/// A request as read off the wire: method, path, headers (names lower-cased), body.
struct Wire {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

fn read_request(stream: &TcpStream) -> Option<Wire> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.trim_end().splitn(3, ' ');
    let method = parts.next()?.to_owned();
    let path = parts.next()?.to_owned();
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
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let mut body = Vec::new();
    if let Some(len) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
        body.resize(len, 0);
        reader.read_exact(&mut body).ok()?;
    } else if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).ok()?;
            let size = usize::from_str_radix(size.trim().split(';').next()?, 16).ok()?;
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk).ok()?;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    }
    Some(Wire {
        method,
        path,
        headers,
        body,
    })
}

fn serve(stream: TcpStream, shared: &Shared) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
    let Some(Wire {
        method,
        path,
        headers,
        body,
    }) = read_request(&stream)
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
    lock(&shared.requests).push(request.clone());
    let reply = {
        let scripted = lock(&shared.script).pop_front();
        let sticky = || lock(&shared.sticky).clone();
        scripted
            .or_else(sticky)
            .unwrap_or_else(|| oauth_reply(shared, &request))
    };
    let wait = *lock(&shared.delay) + reply.delay;
    let until = Instant::now() + wait;
    while Instant::now() < until && !shared.stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(10).min(until - Instant::now()));
    }
    let mut head = format!("HTTP/1.1 {} {}\r\n", reply.status, reason(reply.status));
    for (k, v) in &reply.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        reply.body.len()
    ));
    let mut stream = stream;
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(reply.body.as_bytes());
    let _ = stream.flush();
    let _ = stream.shutdown(Shutdown::Write);
    // Let the client read everything before the socket closes.
    let mut sink = [0u8; 256];
    while let Ok(n) = stream.read(&mut sink) {
        if n == 0 {
            break;
        }
    }
}

/// The code exchange, checked as a real server would: the code is known and unused, the
/// verifier hashes to the challenge, and redirect_uri, client_id and state match.
fn exchange_reply(shared: &Shared, req: &Request) -> Reply {
    use base64::Engine;
    use sha2::Digest;
    let field = |k: &str| req.body.get(k).and_then(Value::as_str).unwrap_or_default();
    let refuse = |why: &str| {
        Reply::json(
            400,
            &json!({"error": "invalid_grant", "error_description": why}),
        )
    };
    let mut codes = lock(&shared.codes);
    let Some(i) = codes.iter().position(|c| c.code == field("code")) else {
        return refuse("unknown or used authorization code");
    };
    let want = codes[i].clone();
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(sha2::Sha256::digest(field("code_verifier").as_bytes()));
    if challenge != want.challenge {
        return refuse("code_verifier does not match the code_challenge");
    }
    if field("redirect_uri") != want.redirect_uri {
        return refuse("redirect_uri does not match");
    }
    if field("client_id") != want.client_id {
        return refuse("client_id does not match");
    }
    if field("state") != want.state {
        return refuse("state does not match");
    }
    codes.remove(i);
    drop(codes);
    let policy = lock(&shared.policy).clone();
    let access = fake_access();
    let refresh = policy.rotate.then(fake_refresh);
    if let Some(r) = &refresh {
        lock(&shared.valid).push(r.clone());
    }
    // The server grants the lifetime asked for, if any, else its policy's.
    let expires_in = req
        .body
        .get("expires_in")
        .and_then(Value::as_u64)
        .or(policy.expires_in);
    grant_reply(shared, &policy, access, refresh, expires_in)
}

/// A successful token answer as the policy shapes it; the pair is recorded as issued.
fn grant_reply(
    shared: &Shared,
    policy: &GrantPolicy,
    access: String,
    refresh: Option<String>,
    expires_in: Option<u64>,
) -> Reply {
    let mut body = Map::new();
    body.insert("token_type".into(), "Bearer".into());
    body.insert("access_token".into(), access.clone().into());
    if let Some(n) = expires_in {
        body.insert("expires_in".into(), n.into());
    }
    if let Some(r) = &refresh {
        body.insert("refresh_token".into(), r.clone().into());
    }
    if let Some(n) = policy.refresh_token_expires_in {
        body.insert("refresh_token_expires_in".into(), n.into());
    }
    if let Some(s) = &policy.scope {
        body.insert("scope".into(), s.clone().into());
    }
    body.insert(
        "account".into(),
        json!({"uuid": "00000000-0000-4000-8000-000000000000", "email_address": "user@example.test"}),
    );
    lock(&shared.issued).push(Issued { access, refresh });
    Reply::json(200, &Value::Object(body))
}

/// The realistic endpoint: single-use refresh tokens, rotated on every success.
fn oauth_reply(shared: &Shared, req: &Request) -> Reply {
    if req.method != "POST" || req.path != TOKEN_PATH {
        return Reply::json(
            404,
            &json!({"error": "not_found", "error_description": "no such endpoint"}),
        );
    }
    if req.body.get("grant_type").and_then(Value::as_str) == Some("authorization_code") {
        return exchange_reply(shared, req);
    }
    if req.body.get("grant_type").and_then(Value::as_str) != Some("refresh_token") {
        return Reply::json(400, &json!({"error": "unsupported_grant_type"}));
    }
    let Some(presented) = req.refresh_token() else {
        return Reply::json(
            400,
            &json!({"error": "invalid_request", "error_description": "refresh_token is required"}),
        );
    };
    let mut valid = lock(&shared.valid);
    let Some(i) = valid.iter().position(|v| v == presented) else {
        return Reply::invalid_grant();
    };
    let policy = lock(&shared.policy).clone();
    let access = fake_access();
    let refresh = policy.rotate.then(fake_refresh);
    if let Some(r) = &refresh {
        valid[i] = r.clone();
    }
    drop(valid);
    grant_reply(shared, &policy, access, refresh, policy.expires_in)
}

/// An address of this machine that is not loopback (the one the default route leaves from), if
/// there is one. No packet is sent: connecting a UDP socket only picks a route.
pub fn non_loopback_ip() -> Option<IpAddr> {
    let s = UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("192.0.2.1:9").ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

// ---------------------------------------------------------------------------------------------
// Running the binary

/// How long any one run may take before it is killed and the test fails. Longer than the
/// default retry budget (60 s), so a run that retries by mistake ends on its own first.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(90);

/// The binary with a clean environment: only PATH, HOME and what the test adds.
pub struct Cmd {
    command: Command,
    shown: Vec<String>,
    timeout: Duration,
}

impl Cmd {
    /// The binary with HOME set to `home`.
    pub fn new(home: &TempHome) -> Cmd {
        Cmd::bare().env("HOME", home.path())
    }

    /// The binary with no HOME at all (only PATH).
    pub fn bare() -> Cmd {
        let mut command = Command::new(bin());
        command.env_clear();
        if let Some(path) = std::env::var_os("PATH") {
            command.env("PATH", path);
        }
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        Cmd {
            command,
            shown: vec!["claude-tokend".into()],
            timeout: RUN_TIMEOUT,
        }
    }

    /// Points `CLAUDE_TOKEND_TOKEN_URL` at the server.
    pub fn server(self, server: &TokenServer) -> Cmd {
        self.env("CLAUDE_TOKEND_TOKEN_URL", server.url())
    }

    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Cmd {
        self.shown.push(a.as_ref().to_string_lossy().into_owned());
        self.command.arg(a);
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(mut self, args: I) -> Cmd {
        for a in args {
            self = self.arg(a);
        }
        self
    }

    pub fn env(mut self, k: impl AsRef<OsStr>, v: impl AsRef<OsStr>) -> Cmd {
        self.shown.insert(
            0,
            format!(
                "{}={}",
                k.as_ref().to_string_lossy(),
                v.as_ref().to_string_lossy()
            ),
        );
        self.command.env(k, v);
        self
    }

    pub fn env_remove(mut self, k: impl AsRef<OsStr>) -> Cmd {
        let name = k.as_ref().to_string_lossy().into_owned();
        self.shown.retain(|s| !s.starts_with(&format!("{name}=")));
        self.command.env_remove(k);
        self
    }

    pub fn timeout(mut self, d: Duration) -> Cmd {
        self.timeout = d;
        self
    }

    /// The command line as a shell would show it (for failure messages).
    pub fn describe(&self) -> String {
        self.shown.join(" ")
    }

    /// Runs to completion (or the timeout).
    pub fn run(self) -> Out {
        self.spawn().wait()
    }

    /// Starts the process; [`Running::wait`] collects it.
    pub fn spawn(mut self) -> Running {
        let described = self.describe();
        let started = Instant::now();
        let mut child = self
            .command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {described}: {e}"));
        let stdout = drain(child.stdout.take());
        let stderr = drain(child.stderr.take());
        Running {
            child,
            cmd: described,
            started,
            timeout: self.timeout,
            stdout,
            stderr,
        }
    }
}

fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut bytes);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// A started run.
pub struct Running {
    child: Child,
    cmd: String,
    started: Instant,
    timeout: Duration,
    stdout: JoinHandle<String>,
    stderr: JoinHandle<String>,
}

impl Running {
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the exit; past the timeout the child is killed and the test fails.
    pub fn wait(mut self) -> Out {
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if self.started.elapsed() > self.timeout => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    let stdout = self.stdout.join().unwrap_or_default();
                    let stderr = self.stderr.join().unwrap_or_default();
                    panic!(
                        "`{}` did not finish within {:?} and was killed\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
                        self.cmd, self.timeout
                    );
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => panic!("waiting for `{}`: {e}", self.cmd),
            }
        };
        let elapsed = self.started.elapsed();
        Out {
            code: status
                .code()
                .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)),
            stdout: self.stdout.join().unwrap_or_default(),
            stderr: self.stderr.join().unwrap_or_default(),
            cmd: self.cmd,
            elapsed,
        }
    }
}

/// What a run left behind.
#[derive(Clone, Debug)]
pub struct Out {
    /// The exit code (128 + signal number when killed by a signal).
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    /// The command line, for messages.
    pub cmd: String,
    pub elapsed: Duration,
}

impl Out {
    /// The run, for failure messages.
    pub fn context(&self) -> String {
        format!(
            "command: {}\nexit code: {}  (after {:?})\n--- stdout ---\n{}\n--- stderr ---\n{}\n--------------",
            self.cmd, self.code, self.elapsed, self.stdout, self.stderr
        )
    }

    /// stdout and stderr together.
    pub fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }

    /// Fails the test, with the run's output, unless `cond` holds.
    #[track_caller]
    pub fn check(&self, cond: bool, what: impl Display) -> &Out {
        if !cond {
            panic!("{what}\n{}", self.context());
        }
        self
    }

    /// Fails the test, with both sides and the run's output, unless `got == want`.
    #[track_caller]
    pub fn check_eq<T: PartialEq + Debug>(&self, what: impl Display, got: T, want: T) -> &Out {
        if got != want {
            panic!(
                "{what}\n  got:  {got:?}\n  want: {want:?}\n{}",
                self.context()
            );
        }
        self
    }

    #[track_caller]
    pub fn expect_code(&self, want: i32) -> &Out {
        self.check_eq("exit code", self.code, want)
    }

    /// No output at all (what `--once` promises cron on success).
    #[track_caller]
    pub fn expect_silent(&self) -> &Out {
        self.check(
            self.stdout.is_empty() && self.stderr.is_empty(),
            "expected no output at all",
        )
    }

    #[track_caller]
    pub fn expect_stderr_contains(&self, needle: &str) -> &Out {
        self.check(
            self.stderr.contains(needle),
            format!("stderr should contain {needle:?}"),
        )
    }

    /// None of `secrets` appears whole in stdout or stderr.
    #[track_caller]
    pub fn expect_no_secret(&self, secrets: &[String]) -> &Out {
        let all = self.all();
        for s in secrets {
            assert!(!s.is_empty(), "an empty secret cannot be looked for");
            self.check(
                !all.contains(s.as_str()),
                format!(
                    "the output contains a whole token ({}…)",
                    &s[..16.min(s.len())]
                ),
            );
        }
        self
    }

    /// Not even a long piece of `token` appears: only a masked form (a family prefix and a few
    /// trailing characters) may. Every 10-character window of the token's secret part is
    /// looked for.
    #[track_caller]
    pub fn expect_masked(&self, token: &str) -> &Out {
        let all = self.all();
        let secret = token.rsplit_once('-').map_or(token, |(_, s)| s);
        for w in secret.as_bytes().windows(10) {
            let w = std::str::from_utf8(w).expect("ASCII token");
            self.check(
                !all.contains(w),
                format!("the output contains a 10-character piece of a token ({w})"),
            );
        }
        self
    }

    /// The file is exactly as it was (bytes, mtime, inode, mode).
    #[track_caller]
    pub fn expect_untouched(&self, path: &Path, before: &FileState) -> &Out {
        let after = FileState::of(path);
        self.check_eq(
            format!("{} content changed", path.display()),
            String::from_utf8_lossy(&after.bytes),
            String::from_utf8_lossy(&before.bytes),
        );
        self.check_eq(
            format!("{} mtime changed", path.display()),
            after.mtime,
            before.mtime,
        );
        self.check_eq(
            format!("{} was replaced (inode changed)", path.display()),
            after.inode,
            before.inode,
        );
        self.check_eq(
            format!("{} mode changed", path.display()),
            after.mode,
            before.mode,
        )
    }

    /// `dir` holds nothing but names in `allowed` (no stray temp files).
    #[track_caller]
    pub fn expect_only_files(&self, dir: &Path, allowed: &[String]) -> &Out {
        let names = list_names(dir);
        let stray: Vec<&String> = names.iter().filter(|n| !allowed.contains(n)).collect();
        self.check(
            stray.is_empty(),
            format!(
                "stray files in {}: {stray:?} (all: {names:?})",
                dir.display()
            ),
        )
    }
}

/// Fails the test with both sides unless `got == want` (for checks not tied to one run).
#[track_caller]
pub fn check_eq<T: PartialEq + Debug>(what: impl Display, got: T, want: T) {
    if got != want {
        panic!("{what}\n  got:  {got:?}\n  want: {want:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Crash, kill and soak checks

/// Polls `cond` every 20 ms until it holds or `limit` passes; returns whether it held.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

/// Stops a daemon run with SIGTERM and collects it; it must exit 0.
pub fn stop(d: Running) -> Out {
    send_signal(&d, libc::SIGTERM);
    let out = d.wait();
    out.expect_code(0);
    out
}

/// Replaces the credentials file as Claude Code or an editor does: a temp file beside it,
/// renamed over it.
pub fn replace_atomically(path: &Path, doc: &Value) {
    let tmp = path.with_file_name(".credentials.json.outside-writer");
    write_creds_at(&tmp, doc);
    fs::rename(&tmp, path).expect("rename over the credentials file");
}

/// Sends `sig` to a started run (kill(2) on our own, not yet reaped, child: its pid cannot
/// have been reused).
pub fn send_signal(r: &Running, sig: i32) {
    // SAFETY: kill(2) with a plain pid and signal number.
    let rc = unsafe { libc::kill(r.id() as i32, sig) };
    assert_eq!(rc, 0, "kill({}, {sig})", r.id());
}

/// Whether a started run is still running (an exited, unreaped child is a zombie, state Z).
pub fn is_running(r: &Running) -> bool {
    fs::read_to_string(format!("/proc/{}/stat", r.id()))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

/// Claude Code's three lock directories for the default config directory `HOME/.claude`:
/// `.claude/.oauth_refresh.lock`, `HOME/.claude.lock` and `.claude/.storage-write.lock`.
pub fn claude_lock_dirs(home: &TempHome) -> [PathBuf; 3] {
    [
        home.claude_dir().join(".oauth_refresh.lock"),
        home.path().join(".claude.lock"),
        home.claude_dir().join(".storage-write.lock"),
    ]
}

/// The names of the lock directories of [`claude_lock_dirs`] that exist.
pub fn lock_dirs_present(home: &TempHome) -> Vec<String> {
    claude_lock_dirs(home)
        .iter()
        .filter(|p| fs::symlink_metadata(p).is_ok())
        .map(|p| {
            p.file_name()
                .expect("a lock directory has a name")
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

/// Temp files beside the credentials file (`.credentials.json.tmp.*`, whatever the exact
/// prefix): names in `HOME/.claude` containing `.credentials.json.tmp.`.
pub fn temp_files(home: &TempHome) -> Vec<PathBuf> {
    list_names(&home.claude_dir())
        .into_iter()
        .filter(|n| n.contains(".credentials.json.tmp."))
        .map(|n| home.claude_dir().join(n))
        .collect()
}

/// Everything a finished run must not leave behind: any name in `HOME/.claude` other than the
/// file and its permanent flock sibling (temp files, a `.bak`, lock directories), and
/// `HOME/.claude.lock`.
pub fn leftovers(home: &TempHome) -> Vec<String> {
    let allowed = allowed_siblings(".credentials.json");
    let mut stray: Vec<String> = list_names(&home.claude_dir())
        .into_iter()
        .filter(|n| !allowed.contains(n))
        .collect();
    if fs::symlink_metadata(home.path().join(".claude.lock")).is_ok() {
        stray.push("../.claude.lock".into());
    }
    stray
}

/// Which token pair a credentials document holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pair {
    /// The pair of the login the test started from.
    Old,
    /// The pair the server issued `n`-th (index into [`TokenServer::issued`]).
    Issued(usize),
}

/// Classifies the `accessToken`/`refreshToken` pair of `doc`: the old login's, or one pair the
/// server issued (both tokens from the same answer). A mix, or tokens nobody issued, is an
/// error describing what was found.
pub fn which_pair(doc: &Value, old: &Login, issued: &[Issued]) -> Result<Pair, String> {
    let o = doc
        .get("claudeAiOauth")
        .and_then(Value::as_object)
        .ok_or_else(|| "no claudeAiOauth object".to_owned())?;
    let access = o.get("accessToken").and_then(Value::as_str).unwrap_or("");
    let refresh = o.get("refreshToken").and_then(Value::as_str).unwrap_or("");
    if access == old.access && refresh == old.refresh {
        return Ok(Pair::Old);
    }
    // Search from the newest: the same token is never issued twice.
    for (i, p) in issued.iter().enumerate().rev() {
        if p.access == access && p.refresh.as_deref().is_none_or(|r| r == refresh) {
            return Ok(Pair::Issued(i));
        }
    }
    let short = |t: &str| format!("{}…", &t[..t.len().min(20)]);
    let from = |t: &str| {
        if t == old.access || t == old.refresh {
            "the old login".to_owned()
        } else if let Some(i) = issued
            .iter()
            .position(|p| p.access == t || p.refresh.as_deref() == Some(t))
        {
            format!("issued pair #{i}")
        } else {
            "nobody".to_owned()
        }
    };
    Err(format!(
        "a mixed or unknown token pair: accessToken {} (from {}), refreshToken {} (from {})",
        short(access),
        from(access),
        short(refresh),
        from(refresh)
    ))
}
