//! The fake keychain's database: one JSON file holding generic-password items keyed by
//! (service, account), each with its value bytes (stored as hex, so any byte survives) and its
//! creation and modification times. Shared by the fake `security` (fake_security/main.rs) and
//! the test harness (src/keychain.rs), which includes this file with `#[path]`, so both read
//! and write one format.
//!
//! Every write replaces the file (temp file in the same directory, fsync, rename): its inode and
//! mtime change, as a watcher of the real `login.keychain-db` expects. Read-modify-write runs
//! under an exclusive flock on the sibling `<db>.flock`, so concurrent invocations never lose an
//! update. Reads take no lock: a rename is atomic.

#![allow(dead_code)]

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

/// One generic-password item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    pub service: String,
    pub account: String,
    pub value: Vec<u8>,
    /// Creation time, Unix seconds (UTC).
    pub cdat: u64,
    /// Last modification time, Unix seconds (UTC).
    pub mdat: u64,
}

/// `<db>.flock`: the flock that serializes writers.
pub fn lock_path(db: &Path) -> PathBuf {
    sibling(db, ".flock")
}

/// `<db>.locked`: while it exists, the keychain is locked (item commands exit 36).
pub fn locked_marker(db: &Path) -> PathBuf {
    sibling(db, ".locked")
}

/// `<db>.fail-writes`: while it exists, add and delete fail (exit 1).
pub fn fail_writes_marker(db: &Path) -> PathBuf {
    sibling(db, ".fail-writes")
}

/// `<db>.hang`: while it exists, every `security` run waits before doing anything, as one does
/// while the keychain asks a person to unlock it (at most [`HANG_LIMIT_SECS`], so no fake
/// outlives a test by much).
pub fn hang_marker(db: &Path) -> PathBuf {
    sibling(db, ".hang")
}

/// The longest a run waits on [`hang_marker`].
pub const HANG_LIMIT_SECS: u64 = 120;

fn sibling(db: &Path, suffix: &str) -> PathBuf {
    let mut name = db.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    db.with_file_name(name)
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub fn to_hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Decodes hex (either case); None for an odd length or a non-hex character.
pub fn from_hex(s: &str) -> Option<Vec<u8>> {
    let s = s.as_bytes();
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let nibble = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    s.chunks(2)
        .map(|p| Some(nibble(p[0])? << 4 | nibble(p[1])?))
        .collect()
}

/// The items in the database; a missing file is an empty keychain.
pub fn load(db: &Path) -> io::Result<Vec<Item>> {
    let text = match fs::read(db) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    if text.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    let bad = |why: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {why}", db.display()),
        )
    };
    let v: Value = serde_json::from_slice(&text).map_err(|e| bad(&e.to_string()))?;
    let items = v
        .get("items")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("no items array"))?;
    items
        .iter()
        .map(|i| {
            let s = |k: &str| {
                i.get(k)
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .ok_or_else(|| bad(&format!("item without {k}")))
            };
            let n = |k: &str| i.get(k).and_then(Value::as_u64).unwrap_or(0);
            Ok(Item {
                service: s("svce")?,
                account: s("acct")?,
                value: from_hex(&s("hex")?).ok_or_else(|| bad("bad hex"))?,
                cdat: n("cdat"),
                mdat: n("mdat"),
            })
        })
        .collect()
}

/// Runs `f` on the items under the exclusive flock; when it returns `Ok`, the new list is
/// written (atomically, always: every write changes the file).
pub fn update<R, E>(
    db: &Path,
    f: impl FnOnce(&mut Vec<Item>) -> Result<R, E>,
) -> io::Result<Result<R, E>> {
    let lock = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(lock_path(db))?;
    flock(&lock, libc::LOCK_EX)?;
    let mut items = load(db)?;
    let out = f(&mut items);
    if out.is_ok() {
        store(db, &items)?;
    }
    drop(lock);
    Ok(out)
}

fn flock(f: &File, op: i32) -> io::Result<()> {
    loop {
        // SAFETY: flock(2) on a descriptor we own.
        if unsafe { libc::flock(f.as_raw_fd(), op) } == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Writes the whole database: a temp file in the same directory, fsync, rename over it.
fn store(db: &Path, items: &[Item]) -> io::Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let list: Vec<Value> = items
        .iter()
        .map(|i| {
            json!({
                "svce": i.service,
                "acct": i.account,
                "hex": to_hex(&i.value),
                "cdat": i.cdat,
                "mdat": i.mdat,
            })
        })
        .collect();
    let mut text = serde_json::to_string_pretty(&json!({ "items": list }))
        .map_err(|e| io::Error::other(e.to_string()))?;
    text.push('\n');
    let tmp = sibling(
        db,
        &format!(
            ".tmp.{}.{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ),
    );
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, db)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Inserts or replaces the item (service, account), stamping its mdat (and cdat when new).
pub fn upsert(items: &mut Vec<Item>, service: &str, account: &str, value: &[u8]) {
    let now = now_secs();
    match items
        .iter_mut()
        .find(|i| i.service == service && i.account == account)
    {
        Some(i) => {
            i.value = value.to_vec();
            i.mdat = now;
        }
        None => items.push(Item {
            service: service.to_owned(),
            account: account.to_owned(),
            value: value.to_vec(),
            cdat: now,
            mdat: now,
        }),
    }
}

/// `yyyymmddhhmmssZ` (UTC) for Unix seconds: the keychain's timedate form.
pub fn timedate(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}{:02}{:02}{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}
