//! Coexistence with Claude Code (issue 6, CONTRACT.md "Coexistence with Claude Code"): its
//! mkdir lock directories (`<config dir>/.oauth_refresh.lock`, `<config dir>.lock`,
//! `<config dir>/.storage-write.lock`) taken, waited for, kept alive, taken over when stale and
//! always removed; writes merged around another writer's changes; a refusal after someone else
//! rotated the token; blank (logged-out) tokens; half-written files; the bind-mount fallback
//! (through the debug build's rename seam); and the refresh-token expiry warning.
//!
//! The test plays Claude Code: it makes the lock directories itself and keeps their mtimes
//! fresh from a thread, as a live Claude Code session does every 5 s.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use claude_tokend_e2e::*;
use serde_json::{Value, json};

/// Generous bounds: CI machines are shared and slow; a passing run takes a fraction of these.
const SOON: Duration = Duration::from_secs(15);

/// A short lead for the daemon, so a token can be due within seconds.
const LEAD: &str = "10s";

mod files;
mod locks;
mod writes;

// ---------------------------------------------------------------------------------------------
// Helpers

/// `HOME/.claude/.oauth_refresh.lock`.
fn oauth_lock(home: &TempHome) -> PathBuf {
    home.claude_dir().join(".oauth_refresh.lock")
}

/// `HOME/.claude.lock` (the config directory's sibling, not a child).
fn config_lock(home: &TempHome) -> PathBuf {
    home.path().join(".claude.lock")
}

/// `HOME/.claude/.storage-write.lock`.
fn write_lock(home: &TempHome) -> PathBuf {
    home.claude_dir().join(".storage-write.lock")
}

fn name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn mtime_of(path: &Path) -> Option<SystemTime> {
    fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// None of the three lock directories is left, and the config directory holds nothing but the
/// file and its permanent flock sibling.
#[track_caller]
fn expect_no_lock_dirs(out: &Out, home: &TempHome) {
    for p in [oauth_lock(home), config_lock(home), write_lock(home)] {
        out.check(
            !p.exists(),
            format!("the lock directory {} was left behind", p.display()),
        );
    }
    out.expect_only_files(&home.claude_dir(), &allowed_siblings(".credentials.json"));
}

fn access_token(home: &TempHome) -> String {
    home.read_creds()["claudeAiOauth"]["accessToken"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// True once the file holds the access token the server issued last. Tolerates a file caught
/// mid-write (polled while the program writes).
fn saved_latest(home: &TempHome, server: &TokenServer) -> bool {
    let Some(issued) = server.issued().last().cloned() else {
        return false;
    };
    fs::read(home.creds_path())
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .is_some_and(|doc| doc["claudeAiOauth"]["accessToken"] == json!(issued.access))
}

#[track_caller]
fn check_saved(out: &Out, home: &TempHome, server: &TokenServer) {
    out.check_eq(
        "the new access token is in the file",
        access_token(home),
        server.last_issued().access,
    );
}

fn daemon(home: &TempHome, server: &TokenServer) -> Cmd {
    Cmd::new(home)
        .server(server)
        .args(["--refresh-before", LEAD])
        .timeout(Duration::from_secs(120))
}

/// Waits until the server has received `n` requests (fails the test otherwise).
#[track_caller]
fn await_requests(server: &TokenServer, n: usize) {
    assert!(
        wait_until(SOON, || server.count() >= n),
        "expected {n} request(s) within {SOON:?}, got {}",
        server.count()
    );
}

/// A typical document whose login is blank, as Claude Code leaves it after a failed refresh.
fn blank_doc() -> Value {
    let mut doc = Login::due().doc();
    doc["claudeAiOauth"]["accessToken"] = json!("");
    doc["claudeAiOauth"]["refreshToken"] = json!("");
    doc["claudeAiOauth"]["expiresAt"] = json!(0);
    doc
}

/// Lines of `text` that contain `needle`.
fn lines_with(text: &str, needle: &str) -> usize {
    text.lines().filter(|l| l.contains(needle)).count()
}
