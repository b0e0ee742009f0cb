//! The Keychain store (CONTRACT.md "Stores: the file, and the macOS Keychain"), black-box, on
//! Linux: a fake `security` first on PATH (fake_security/, driven by
//! `claude_tokend_e2e::keychain::FakeKeychain`) holds the item, and the real binary runs with
//! `--store keychain` against the loopback token endpoint, as the file tests run on the file.
//!
//! - `fake`: the fake `security` itself (passes on its own);
//! - `refresh`: `--once` on the item: the write (`-i`, hex, no secret in argv; argv past 4032
//!   bytes), concurrency, hex reads, missing and malformed items, compare-and-swap, a failed write;
//! - `locks`: Claude Code's lock directories and our flock, a locked keychain;
//! - `naming`: the service suffix and the account;
//! - `commands`: status, login, logout, `--store auto` on Linux;
//! - `daemon`: the daemon on the item, noticing outside writes without polling;
//! - `auto`: `--store auto` deciding as on macOS (through a debug-only seam);
//! - `too_big`: an item too big for `security`'s command line, refused before any request.

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use claude_tokend_e2e::keychain::*;
use claude_tokend_e2e::*;
use serde_json::{Value, json};

mod auto;
mod commands;
mod daemon;
mod fake;
mod locks;
mod naming;
mod refresh;
mod too_big;

/// Generous bounds: the machine is shared and slow; a passing run takes a fraction of these.
pub(crate) const SOON: Duration = Duration::from_secs(15);

/// A home with `.claude` (as Claude Code leaves it) and a fake keychain holding one item.
pub(crate) struct Setup {
    pub home: TempHome,
    pub kc: FakeKeychain,
    pub service: String,
    pub account: String,
}

impl Setup {
    /// An empty keychain; the item is named as with no config dir and `USER` = [`TEST_USER`].
    pub fn empty() -> Setup {
        let home = TempHome::new();
        mkdir(&home.claude_dir());
        let kc = FakeKeychain::new(&home);
        Setup {
            home,
            kc,
            service: SERVICE.to_owned(),
            account: TEST_USER.to_owned(),
        }
    }

    /// The item holds `doc`.
    pub fn with(doc: &Value) -> Setup {
        let s = Setup::empty();
        s.put(doc);
        s
    }

    pub fn put(&self, doc: &Value) {
        self.kc.put(&self.service, &self.account, doc);
    }

    /// The item's JSON (panics when missing).
    pub fn item(&self) -> Value {
        self.kc
            .get(&self.service, &self.account)
            .unwrap_or_else(|| panic!("no item ({}, {})", self.service, self.account))
    }

    pub fn raw(&self) -> Option<Vec<u8>> {
        self.kc.raw(&self.service, &self.account)
    }

    /// The binary with the fake on PATH and `--store keychain` after `args`.
    pub fn cmd(&self, server: &TokenServer, args: &[&str]) -> Cmd {
        self.kc
            .apply(Cmd::new(&self.home).server(server))
            .args(args)
            .args(["--store", "keychain"])
    }

    /// `--once --store keychain`.
    pub fn once(&self, server: &TokenServer) -> Cmd {
        self.cmd(server, &["--once"])
    }

    /// True once the item holds the access token the server issued last (tolerates a missing
    /// item).
    pub fn saved_latest(&self, server: &TokenServer) -> bool {
        let Some(issued) = server.issued().last().cloned() else {
            return false;
        };
        self.raw()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .is_some_and(|d| d["claudeAiOauth"]["accessToken"] == json!(issued.access))
    }
}

pub(crate) fn mkdir(p: &Path) {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(p)
        .unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
}

/// The item holds the pair the server issued last, and everything else of `before` unchanged,
/// in the same order.
#[track_caller]
pub(crate) fn check_refreshed(out: &Out, s: &Setup, server: &TokenServer, before: &Value) {
    let after = s.item();
    out.expect_latest_pair("the item", &after, server, before)
        .check_eq("top-level key order", keys(&after), keys(before));
    let old_keys = keys(&before["claudeAiOauth"]);
    let kept: Vec<String> = keys(&after["claudeAiOauth"])
        .into_iter()
        .filter(|k| old_keys.contains(k))
        .collect();
    out.check_eq("claudeAiOauth key order", kept, old_keys);
}

/// A typical document with the keys a Keychain item holds besides the login.
pub(crate) fn item_doc(login: &Login) -> Value {
    let mut doc = login.doc();
    doc["organizationUuid"] = json!("3f0c2a9e-0000-4000-8000-00000000beef");
    doc
}

/// No `security` invocation carried any of `secrets` (whole or hex-encoded) in its argv.
#[track_caller]
pub(crate) fn expect_no_secret_in_argv(out: &Out, kc: &FakeKeychain, secrets: &[String]) {
    for argv in kc.argv_calls() {
        let joined = argv.join(" ");
        for s in secrets {
            out.check(
                !joined.contains(s.as_str()) && !joined.contains(&to_hex(s.as_bytes())),
                format!(
                    "a token ({}…) appears in security's argv: {}…",
                    &s[..16],
                    &joined[..joined.len().min(120)]
                ),
            );
        }
    }
}

/// The only write was one `add-generic-password -U -a ACCOUNT -s SERVICE -X HEX` of exactly the
/// item's bytes, given on `security -i`'s stdin (`via_stdin`) or as argv.
#[track_caller]
pub(crate) fn expect_one_write_of_the_item(out: &Out, s: &Setup, via_stdin: bool) {
    let writes = s.kc.writes();
    out.check_eq("writes to the keychain", writes.len(), 1);
    let w = &writes[0];
    let stored = s.raw().expect("the item exists");
    let mut sorted = w.clone();
    sorted.sort();
    let mut want = [
        "add-generic-password",
        "-U",
        "-a",
        &s.account,
        "-s",
        &s.service,
        "-X",
        &to_hex(&stored),
    ]
    .map(String::from)
    .to_vec();
    want.sort();
    out.check_eq(
        "the write's command name",
        w[0].as_str(),
        "add-generic-password",
    )
    .check_eq(
        "the write's words (add-generic-password -U -a ACCOUNT -s SERVICE -X HEX of the item)",
        sorted,
        want,
    )
    .check_eq(
        "option values",
        (option_value(w, "-a"), option_value(w, "-s")),
        (Some(s.account.as_str()), Some(s.service.as_str())),
    );
    let argv_writes: Vec<Vec<String>> =
        s.kc.argv_calls()
            .into_iter()
            .filter(|a| a.iter().any(|w| w == "add-generic-password"))
            .collect();
    let stdin_writes: Vec<String> =
        s.kc.stdin_lines()
            .into_iter()
            .filter(|l| l.contains("add-generic-password"))
            .collect();
    if via_stdin {
        out.check_eq("writes given as argv", argv_writes.len(), 0)
            .check_eq("writes given on stdin", stdin_writes.len(), 1);
        out.check(
            stdin_writes[0].len() <= MAX_STDIN_LINE,
            format!("a stdin line of {} bytes", stdin_writes[0].len()),
        );
    } else {
        out.check_eq("writes given as argv", argv_writes.len(), 1)
            .check_eq("writes given on stdin", stdin_writes.len(), 0);
    }
    out.check(
        !s.kc.results().contains(&45),
        "security exited 45: a write without -U",
    )
    .check_eq(
        "the item is compact JSON",
        String::from_utf8_lossy(&stored).into_owned(),
        serde_json::to_string(&s.item()).unwrap(),
    );
}

/// Claude Code's lock directories of `HOME/.claude`, none left, and no credentials file made:
/// `.claude` holds at most the program's flock file.
#[track_caller]
pub(crate) fn expect_no_file_and_no_lock_dirs(out: &Out, home: &TempHome) {
    out.check(
        !home.path().join(".claude.lock").exists(),
        "HOME/.claude.lock was left behind",
    );
    out.expect_only_files(&home.claude_dir(), &[".credentials.json.lock".to_owned()]);
}

/// Waits until the server has received `n` requests (fails the test otherwise).
#[track_caller]
pub(crate) fn await_requests(server: &TokenServer, n: usize) {
    assert!(
        wait_until(SOON, || server.count() >= n),
        "expected {n} request(s) within {SOON:?}, got {}",
        server.count()
    );
}
