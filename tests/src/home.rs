//! The temporary HOME and what goes in it: [`TempHome`], credentials documents built from a
//! [`Login`] with fake tokens ([`typical_doc`], [`without_owned`], ...), and the file helpers
//! that write and inspect them ([`write_creds_at`], [`read_json`], [`FileState`], ...). Never
//! runs the binary and never talks to the token server.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use serde_json::{Map, Value, json};

use crate::basics::{now_ms, random_alnum};

// ---------------------------------------------------------------------------------------------
// Fake tokens

/// A fake access token, shaped like Claude Code's (never a real one).
pub fn fake_access() -> String {
    format!("sk-ant-oat01-{}", random_alnum(48))
}

/// A fake refresh token, shaped like Claude Code's (never a real one).
pub fn fake_refresh() -> String {
    format!("sk-ant-ort01-{}", random_alnum(48))
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

/// The fingerprint the program's lock file names a refresh token by (its records hold this,
/// never a token): the first 8 bytes of the token's SHA-256, in hex.
pub fn token_fingerprint(token: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(token.as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
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

/// Replaces the credentials file as Claude Code or an editor does: a temp file beside it,
/// renamed over it.
pub fn replace_atomically(path: &Path, doc: &Value) {
    let tmp = path.with_file_name(".credentials.json.outside-writer");
    write_creds_at(&tmp, doc);
    fs::rename(&tmp, path).expect("rename over the credentials file");
}

/// `FS_IMMUTABLE_FL` (linux/fs.h): no entry of the directory can be made, removed or renamed,
/// by root either.
const FS_IMMUTABLE_FL: libc::c_long = 0x10;

/// Makes `dir` immutable (or mutable again): how a test running as root, whom modes do not
/// stop, gets a directory nothing can be written in.
pub fn set_immutable(dir: &Path, on: bool) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let f = fs::File::open(dir)?;
    let mut flags: libc::c_long = 0;
    // SAFETY: FS_IOC_GETFLAGS/SETFLAGS on an open directory with a pointer to a long.
    unsafe {
        if libc::ioctl(f.as_raw_fd(), libc::FS_IOC_GETFLAGS, &mut flags) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        flags = if on {
            flags | FS_IMMUTABLE_FL
        } else {
            flags & !FS_IMMUTABLE_FL
        };
        if libc::ioctl(f.as_raw_fd(), libc::FS_IOC_SETFLAGS, &flags) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
