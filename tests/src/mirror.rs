//! Access-only copies ("mirrors", CONTRACT.md "Access-only copies for containers and other
//! machines") seen from outside: where a mirror file is, reading it as a suspicious consumer
//! would (a regular file, never through a link), what it must hold for a given source
//! ([`access_only`], [`mirror_mismatch`]), a consumer's own keys ([`consumer_keys`]), and a
//! snapshot of everything under a directory ([`snapshot`]) to prove nothing was written outside
//! the mirror directory. Only looks and compares; never runs the binary.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

/// The keys of `claudeAiOauth` a mirror copies (those present in the source), and no other.
pub const MIRROR_OAUTH_KEYS: [&str; 5] = [
    "accessToken",
    "expiresAt",
    "scopes",
    "subscriptionType",
    "rateLimitTier",
];

/// `DIR/.credentials.json`.
pub fn mirror_path(dir: &Path) -> PathBuf {
    dir.join(".credentials.json")
}

/// Top-level keys a consumer keeps in its own mirror file (its own MCP logins and a setting):
/// a mirror write must keep them exactly. They hold no `refreshToken` key, so the mirror's text
/// never has a reason to contain one.
pub fn consumer_keys() -> Value {
    json!({
        "mcpOAuth": {
            "consumer-mcp|0c0ffee": {
                "serverName": "consumer-mcp",
                "serverUrl": "https://consumer-mcp.example.test/mcp",
                "accessToken": "consumer-own-mcp-access-4321"
            }
        },
        "consumerSetting": ["kept", 2, {"deep": true}]
    })
}

/// The `claudeAiOauth` a mirror of `source` must hold: the copied keys present in the source's,
/// or `None` when the source has no (or a blank) access token, so the mirror must have none.
pub fn access_only(source: &Value) -> Option<Map<String, Value>> {
    let oauth = source.get("claudeAiOauth")?.as_object()?;
    let access = oauth.get("accessToken")?.as_str()?;
    if access.trim().is_empty() {
        return None;
    }
    Some(
        MIRROR_OAUTH_KEYS
            .iter()
            .filter_map(|k| oauth.get(*k).map(|v| ((*k).to_owned(), v.clone())))
            .collect(),
    )
}

/// The whole mirror document for `source` beside the consumer's own top-level keys `consumer`
/// (an object; `json!({})` for none).
pub fn expected_mirror(source: &Value, consumer: &Value) -> Value {
    let mut doc = consumer.as_object().cloned().unwrap_or_default();
    doc.remove("claudeAiOauth");
    if let Some(oauth) = access_only(source) {
        doc.insert("claudeAiOauth".into(), Value::Object(oauth));
    }
    Value::Object(doc)
}

/// The mirror file in `dir`, parsed, if it is a regular file (not followed if a link) that
/// parses; otherwise what it is instead.
pub fn read_mirror(dir: &Path) -> Result<Value, String> {
    let path = mirror_path(dir);
    let meta = fs::symlink_metadata(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !meta.file_type().is_file() {
        return Err(format!(
            "{} is not a regular file ({:?})",
            path.display(),
            meta.file_type()
        ));
    }
    let text = fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text)
        .map_err(|e| format!("{} is not JSON ({e}):\n{text}", path.display()))
}

/// The access token the mirror in `dir` holds, if any.
pub fn mirror_access(dir: &Path) -> Option<String> {
    read_mirror(dir)
        .ok()?
        .get("claudeAiOauth")?
        .get("accessToken")?
        .as_str()
        .map(str::to_owned)
}

/// Why the mirror in `dir` is not what it must be for `source` with the consumer's keys
/// `consumer` (exactly those keys, nothing of the source's but the copied ones; a regular file
/// with one link, mode 0600); `None` when it is.
pub fn mirror_mismatch(dir: &Path, source: &Value, consumer: &Value) -> Option<String> {
    let doc = match read_mirror(dir) {
        Ok(doc) => doc,
        Err(e) => return Some(e),
    };
    let want = expected_mirror(source, consumer);
    if doc != want {
        return Some(format!(
            "the mirror holds\n{doc:#}\nbut should hold\n{want:#}"
        ));
    }
    let meta = fs::symlink_metadata(mirror_path(dir)).ok()?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode != 0o600 {
        return Some(format!("the mirror file's mode is {mode:o}, not 600"));
    }
    if meta.nlink() != 1 {
        return Some(format!("the mirror file has {} links", meta.nlink()));
    }
    None
}

/// Polls until the mirror in `dir` is what it must be for the document at `source_path` (read
/// afresh each time; a missing file holds no login) and `consumer`; the last mismatch when
/// `limit` passes.
pub fn wait_for_mirror(
    dir: &Path,
    source_path: &Path,
    consumer: &Value,
    limit: Duration,
) -> Result<(), String> {
    let start = Instant::now();
    loop {
        // A source file that is gone holds no login (a logout that deleted it).
        let source = match fs::read_to_string(source_path) {
            Ok(t) => serde_json::from_str::<Value>(&t).ok(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(json!({})),
            Err(_) => None,
        };
        let why = match source {
            Some(source) => mirror_mismatch(dir, &source, consumer),
            None => Some(format!(
                "the source {} is unreadable",
                source_path.display()
            )),
        };
        match why {
            None => return Ok(()),
            Some(why) if start.elapsed() >= limit => {
                return Err(format!("after {:?}: {why}", start.elapsed()));
            }
            Some(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Everything under `root` except the paths in `skip` (and what is under them): for each path,
/// its kind and, for files and links, what tells whether it changed (bytes' length, mtime,
/// inode, link target). Directories are listed without their mtime (a lock made and removed
/// elsewhere may touch it).
pub fn snapshot(root: &Path, skip: &[&Path]) -> BTreeMap<PathBuf, String> {
    fn walk(p: &Path, skip: &[&Path], out: &mut BTreeMap<PathBuf, String>) {
        if skip.contains(&p) {
            return;
        }
        let Ok(meta) = fs::symlink_metadata(p) else {
            return;
        };
        let t = meta.file_type();
        let what = if t.is_dir() {
            "dir".to_owned()
        } else if t.is_symlink() {
            format!("symlink -> {:?}", fs::read_link(p).ok())
        } else if t.is_fifo() {
            "fifo".to_owned()
        } else {
            format!(
                "file len {} ino {} mtime {}.{:09} mode {:o}",
                meta.len(),
                meta.ino(),
                meta.mtime(),
                meta.mtime_nsec(),
                meta.mode() & 0o7777
            )
        };
        out.insert(p.to_owned(), what);
        if t.is_dir()
            && let Ok(rd) = fs::read_dir(p)
        {
            for e in rd.flatten() {
                walk(&e.path(), skip, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, skip, &mut out);
    out
}

/// The differences between two [`snapshot`]s, one line each (empty when none).
pub fn snapshot_diff(
    before: &BTreeMap<PathBuf, String>,
    after: &BTreeMap<PathBuf, String>,
) -> Vec<String> {
    let mut diff = Vec::new();
    for (p, b) in before {
        match after.get(p) {
            None => diff.push(format!("removed: {} ({b})", p.display())),
            Some(a) if a != b => diff.push(format!("changed: {} ({b} -> {a})", p.display())),
            Some(_) => {}
        }
    }
    for (p, a) in after {
        if !before.contains_key(p) {
            diff.push(format!("new: {} ({a})", p.display()));
        }
    }
    diff
}
