//! The macOS Keychain, faked: [`FakeKeychain`] puts the fake `security` (the `fake-security`
//! binary of this package, fake_security/main.rs) first on PATH for a run, with its item
//! database at `HOME/Library/Keychains/login.keychain-db`, and lets a test play Claude Code (or
//! the user) on the items: put, read, delete, lock the keychain, make writes fail, make every
//! run hang (a keychain waiting for a person), and read the log of every `security`
//! invocation the program made. Also the contract's naming rules for the item
//! ([`service_for`], [`account_for`]) and the exact `-i` line it writes ([`stdin_line`]). Uses
//! the home and the runner; nothing else uses it.

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::home::TempHome;
use crate::runner::Cmd;

#[path = "../fake_security/db.rs"]
mod db;

pub use db::{from_hex, to_hex};

/// Claude Code's service name without a config-dir suffix.
pub const SERVICE: &str = "Claude Code-credentials";
/// The account when `$USER` is unset or unusable.
pub const FALLBACK_ACCOUNT: &str = "claude-code-user";
/// The `$USER` [`FakeKeychain::apply`] sets.
pub const TEST_USER: &str = "e2e-user";
/// The longest `-i` line the contract lets the program write (longer: argv).
pub const MAX_STDIN_LINE: usize = 4032;
/// What `security -i` reads of a line at most: a longer line is cut here.
pub const SECURITY_LINE_BUFFER: usize = 4095;

/// The contract's service name: `Claude Code-credentials`, plus `-` and the first 8 hex digits
/// of the SHA-256 of `CLAUDE_SECURESTORAGE_CONFIG_DIR` when it is set and non-empty, else of
/// `CLAUDE_CONFIG_DIR` when it is set (as given); no suffix when neither is set or when
/// `CLAUDE_SECURESTORAGE_CONFIG_DIR` is set but empty. The path is NFC-normalized first: only
/// ASCII paths (already NFC) are supported here.
pub fn service_for(config_dir: Option<&str>, securestorage: Option<&str>) -> String {
    let dir = match (securestorage, config_dir) {
        (Some(""), _) => None,
        (Some(s), _) => Some(s),
        (None, Some(c)) => Some(c),
        (None, None) => None,
    };
    match dir {
        None => SERVICE.to_owned(),
        Some(d) => {
            assert!(
                d.is_ascii(),
                "service_for supports ASCII paths only (NFC normalization is not implemented): {d:?}"
            );
            let hash = Sha256::digest(d.as_bytes());
            let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
            format!("{SERVICE}-{}", &hex[..8])
        }
    }
}

/// The contract's account: `$USER` when it is made of `[A-Za-z0-9._-]`, else `claude-code-user`.
pub fn account_for(user: Option<&str>) -> String {
    match user {
        Some(u)
            if !u.is_empty()
                && u.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) =>
        {
            u.to_owned()
        }
        _ => FALLBACK_ACCOUNT.to_owned(),
    }
}

/// The `-i` line the contract has the program write for `value` (without the newline):
/// `add-generic-password -U -a "ACCOUNT" -s "SERVICE" -X "HEX"`.
pub fn stdin_line(service: &str, account: &str, value: &[u8]) -> String {
    format!(
        "add-generic-password -U -a \"{account}\" -s \"{service}\" -X \"{}\"",
        to_hex(value)
    )
}

/// The `fake-security` binary: `$FAKE_SECURITY_BIN` when set, else the one cargo built beside
/// the test executable's directory (`target/<profile>/fake-security`).
pub fn fake_security_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("FAKE_SECURITY_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("the test executable's own path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test executable lives in target/<profile>/deps/");
    let p = dir.join("fake-security");
    assert!(
        p.is_file(),
        "the fake security is not at {}: it is built by `cargo test -p claude-tokend-e2e` \
         (or point FAKE_SECURITY_BIN at it)",
        p.display()
    );
    p
}

/// A fake login keychain in a [`TempHome`]: `HOME/Library/Keychains/login.keychain-db` (created
/// empty), a directory `HOME/.fake-security/bin` holding only `security` (a symlink to the fake),
/// and the call log `HOME/.fake-security/log`. Removed with the home.
pub struct FakeKeychain {
    bin_dir: PathBuf,
    db: PathBuf,
    log: PathBuf,
}

impl FakeKeychain {
    pub fn new(home: &TempHome) -> FakeKeychain {
        let mkdir = |p: &Path| {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(p)
                .unwrap_or_else(|e| panic!("creating {}: {e}", p.display()));
        };
        let keychains = home.path().join("Library").join("Keychains");
        let bin_dir = home.path().join(".fake-security").join("bin");
        mkdir(&keychains);
        mkdir(&bin_dir);
        let security = bin_dir.join("security");
        std::os::unix::fs::symlink(fake_security_bin(), &security)
            .unwrap_or_else(|e| panic!("linking {}: {e}", security.display()));
        let kc = FakeKeychain {
            bin_dir,
            db: keychains.join("login.keychain-db"),
            log: home.path().join(".fake-security").join("log"),
        };
        kc.update(|_| ());
        kc
    }

    /// The database file: what `keychain:` names in the attribute listing.
    pub fn db_path(&self) -> &Path {
        &self.db
    }

    /// The directory holding `security`.
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// PATH with the fake's directory first, then the test process's PATH.
    pub fn path_env(&self) -> OsString {
        let mut parts = vec![self.bin_dir.clone()];
        if let Some(p) = std::env::var_os("PATH") {
            parts.extend(std::env::split_paths(&p));
        }
        std::env::join_paths(parts).expect("PATH")
    }

    /// The environment a run needs to find and use the fake: PATH, FAKE_SECURITY_DB,
    /// FAKE_SECURITY_LOG, and USER = [`TEST_USER`] (override or remove it after).
    pub fn apply(&self, cmd: Cmd) -> Cmd {
        cmd.env("PATH", self.path_env())
            .env("FAKE_SECURITY_DB", &self.db)
            .env("FAKE_SECURITY_LOG", &self.log)
            .env("USER", TEST_USER)
    }

    /// The fake `security` itself as a [`std::process::Command`], with the same environment
    /// (for the fake's own tests).
    pub fn security(&self) -> std::process::Command {
        let mut c = std::process::Command::new(self.bin_dir.join("security"));
        c.env_clear()
            .env("PATH", self.path_env())
            .env("FAKE_SECURITY_DB", &self.db)
            .env("FAKE_SECURITY_LOG", &self.log);
        c
    }

    fn update<R>(&self, f: impl FnOnce(&mut Vec<db::Item>) -> R) -> R {
        db::update(&self.db, |items| Ok::<R, ()>(f(items)))
            .unwrap_or_else(|e| panic!("the fake keychain {}: {e}", self.db.display()))
            .expect("infallible")
    }

    fn items(&self) -> Vec<db::Item> {
        db::load(&self.db)
            .unwrap_or_else(|e| panic!("the fake keychain {}: {e}", self.db.display()))
    }

    /// Writes `doc` as the item's value, compact, as Claude Code does (creating or replacing it).
    pub fn put(&self, service: &str, account: &str, doc: &Value) {
        let text = serde_json::to_string(doc).expect("JSON");
        self.put_raw(service, account, text.as_bytes());
    }

    /// Writes raw bytes as the item's value.
    pub fn put_raw(&self, service: &str, account: &str, bytes: &[u8]) {
        self.update(|items| db::upsert(items, service, account, bytes));
    }

    /// Removes the item; whether it existed.
    pub fn delete(&self, service: &str, account: &str) -> bool {
        self.update(|items| {
            let before = items.len();
            items.retain(|i| !(i.service == service && i.account == account));
            items.len() != before
        })
    }

    /// The item's value bytes, if it exists.
    pub fn raw(&self, service: &str, account: &str) -> Option<Vec<u8>> {
        self.items()
            .into_iter()
            .find(|i| i.service == service && i.account == account)
            .map(|i| i.value)
    }

    /// The item's value as JSON, if it exists (panics, with the bytes, if it is not JSON).
    pub fn get(&self, service: &str, account: &str) -> Option<Value> {
        self.raw(service, account).map(|b| {
            serde_json::from_slice(&b).unwrap_or_else(|e| {
                panic!(
                    "the item ({service}, {account}) is not JSON ({e}): {}",
                    String::from_utf8_lossy(&b)
                )
            })
        })
    }

    /// The item's modification time (Unix seconds), if it exists.
    pub fn mdat(&self, service: &str, account: &str) -> Option<u64> {
        self.items()
            .into_iter()
            .find(|i| i.service == service && i.account == account)
            .map(|i| i.mdat)
    }

    /// (service, account) of every item, in the database's order.
    pub fn item_names(&self) -> Vec<(String, String)> {
        self.items()
            .into_iter()
            .map(|i| (i.service, i.account))
            .collect()
    }

    /// The database file's mtime (every write moves it).
    pub fn db_mtime(&self) -> SystemTime {
        fs::metadata(&self.db)
            .and_then(|m| m.modified())
            .expect("mtime of the fake keychain")
    }

    /// The database file's bytes (to show nothing was written at all).
    pub fn db_bytes(&self) -> Vec<u8> {
        fs::read(&self.db).expect("reading the fake keychain")
    }

    /// Locks the keychain: every item command exits 36 until [`FakeKeychain::unlock`].
    pub fn lock(&self) {
        fs::write(db::locked_marker(&self.db), b"").expect("locking the fake keychain");
    }

    pub fn unlock(&self) {
        let _ = fs::remove_file(db::locked_marker(&self.db));
    }

    /// While on, add and delete exit 1 (a write that fails).
    pub fn fail_writes(&self, on: bool) {
        let m = db::fail_writes_marker(&self.db);
        if on {
            fs::write(&m, b"").expect("creating the fail-writes marker");
        } else {
            let _ = fs::remove_file(&m);
        }
    }

    /// While on, every `security` run waits before doing anything (and is logged as started),
    /// as one does while the keychain asks a person to unlock it; turning it off (or dropping
    /// the home) lets them go on.
    pub fn hang(&self, on: bool) {
        let m = db::hang_marker(&self.db);
        if on {
            fs::write(&m, b"").expect("creating the hang marker");
        } else {
            let _ = fs::remove_file(&m);
        }
    }

    /// Every log entry so far: JSON arrays whose first element says what it is: `argv` (one per
    /// process, the arguments after the program name), `stdin` (a line `-i` read, as read: a cut
    /// line shows as its pieces), `run` (a command run, its words), `result` (its status),
    /// `exit` (the process's status).
    pub fn log(&self) -> Vec<Vec<String>> {
        let text = match fs::read_to_string(&self.log) {
            Ok(t) => t,
            Err(_) => return Vec::new(),
        };
        text.lines()
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("a log line of the fake security ({e}): {l}"))
            })
            .collect()
    }

    /// Forgets the log so far.
    pub fn clear_log(&self) {
        let _ = fs::remove_file(&self.log);
    }

    fn tagged(&self, tag: &str) -> Vec<Vec<String>> {
        self.log()
            .into_iter()
            .filter(|e| e.first().is_some_and(|t| t == tag))
            .map(|mut e| {
                e.remove(0);
                e
            })
            .collect()
    }

    /// The argument vectors of every invocation (after the program name).
    pub fn argv_calls(&self) -> Vec<Vec<String>> {
        self.tagged("argv")
    }

    /// Every line `security -i` read.
    pub fn stdin_lines(&self) -> Vec<String> {
        self.tagged("stdin")
            .into_iter()
            .map(|e| e.into_iter().next().unwrap_or_default())
            .collect()
    }

    /// Every command run, from argv or stdin, as its words.
    pub fn commands(&self) -> Vec<Vec<String>> {
        self.tagged("run")
    }

    /// The commands that write: `add-generic-password` and `delete-generic-password`.
    pub fn writes(&self) -> Vec<Vec<String>> {
        self.commands()
            .into_iter()
            .filter(|c| {
                c.first()
                    .is_some_and(|n| n == "add-generic-password" || n == "delete-generic-password")
            })
            .collect()
    }

    /// The status of every command run.
    pub fn results(&self) -> Vec<i32> {
        self.tagged("result")
            .into_iter()
            .filter_map(|e| e.first().and_then(|c| c.parse().ok()))
            .collect()
    }

    /// How many times `security` was started.
    pub fn invocations(&self) -> usize {
        self.argv_calls().len()
    }
}

/// The value of option `flag` in a command's words (`-a`, `-s`, `-X`...), if present.
pub fn option_value<'a>(words: &'a [String], flag: &str) -> Option<&'a str> {
    words
        .iter()
        .position(|w| w == flag)
        .and_then(|i| words.get(i + 1))
        .map(String::as_str)
}
