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

// ---------------------------------------------------------------------------------------------
// Claude Code's refresh locks: waited for while live, taken over when stale

/// A live lock holds `--once` off a due token: no request while it exists; once the test removes
/// it, one request, exit 0, and no lock directory left.
fn live_lock_holds_off_once_until_removed(lock_of: fn(&TempHome) -> PathBuf) {
    let home = TempHome::new();
    let login = Login::due();
    home.write_creds(&login.doc());
    let server = TokenServer::for_login(&login);
    let lock = LiveLock::hold(&lock_of(&home));
    let running = Cmd::new(&home).server(&server).arg("--once").spawn();

    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        server.count(),
        0,
        "a request was sent while the live {} was held",
        name(lock.path())
    );
    assert!(
        is_running(&running),
        "--once should still be waiting for the live {}",
        name(lock.path())
    );
    let released = Instant::now();
    lock.release();
    let out = running.wait();
    out.expect_code(0)
        .expect_silent()
        .check_eq("requests sent", server.count(), 1)
        .check(
            released.elapsed() < Duration::from_secs(5),
            format!(
                "took {:?} after the lock was released to finish",
                released.elapsed()
            ),
        );
    out.check_eq(
        "the refresh token sent",
        server.requests()[0].refresh_token(),
        Some(login.refresh.as_str()),
    );
    check_saved(&out, &home, &server);
    expect_no_lock_dirs(&out, &home);
}

#[test]
fn a_live_oauth_refresh_lock_holds_off_once_until_removed() {
    live_lock_holds_off_once_until_removed(oauth_lock);
}

#[test]
fn a_live_config_dir_lock_holds_off_once_until_removed() {
    live_lock_holds_off_once_until_removed(config_lock);
}

/// A lock untouched for minutes (its holder crashed) is taken over at once.
#[test]
fn a_stale_refresh_lock_is_taken_over_promptly() {
    for lock_of in [oauth_lock as fn(&TempHome) -> PathBuf, config_lock] {
        let home = TempHome::new();
        let login = Login::due();
        home.write_creds(&login.doc());
        let server = TokenServer::for_login(&login);
        fs::create_dir_all(home.claude_dir()).unwrap();
        let lock = lock_of(&home);
        abandoned_lock(&lock, 5 * 60);
        let out = Cmd::new(&home).server(&server).arg("--once").run();
        out.expect_code(0)
            .check_eq(
                format!("requests sent with a stale {}", name(&lock)),
                server.count(),
                1,
            )
            .check(
                out.elapsed < Duration::from_secs(10),
                format!(
                    "a stale {} took {:?} to take over",
                    name(&lock),
                    out.elapsed
                ),
            );
        check_saved(&out, &home, &server);
        expect_no_lock_dirs(&out, &home);
    }
}

/// With a live lock and a short budget, `--once` gives up with 75, sends nothing, changes
/// nothing, and leaves the other process's lock where it is (it removes only its own). A lock
/// touched 30 s ago is live too: stale means more than 60 s.
fn live_lock_past_the_wait_limit_exits_75(lock_of: fn(&TempHome) -> PathBuf) {
    for touched in [true, false] {
        let home = TempHome::new();
        let login = Login::due();
        home.write_creds(&login.doc());
        let server = TokenServer::for_login(&login);
        let path = lock_of(&home);
        let live = if touched {
            Some(LiveLock::hold(&path))
        } else {
            abandoned_lock(&path, 30);
            None
        };
        let what = format!(
            "{} ({})",
            name(&path),
            if touched { "touched" } else { "30 s old" }
        );
        let before = home.state();
        let out = Cmd::new(&home)
            .server(&server)
            .args(["--once", "--retry-budget", "2s"])
            // The real limit is 2 minutes; the debug seam makes it 3 s for the test.
            .env("CLAUDE_TOKEND_TEST_LOCK_WAIT_LIMIT_MS", "3000")
            .run();
        out.expect_code(75)
            .check_eq(
                format!("requests sent with a live {what}"),
                server.count(),
                0,
            )
            .check(
                out.elapsed < Duration::from_secs(10) && out.elapsed >= Duration::from_millis(2500),
                format!("a 3s lock-wait limit took {:?}", out.elapsed),
            )
            .check(
                out.stderr.contains(&name(&path)),
                format!("stderr should name the held lock {what}"),
            )
            .check(
                path.is_dir(),
                format!("the other process's live {what} was removed"),
            )
            .expect_untouched(&home.creds_path(), &before);
        // Ours (the other refresh lock, when it was taken before the wait) is gone.
        for p in [oauth_lock(&home), config_lock(&home), write_lock(&home)] {
            if p != path {
                out.check(!p.exists(), format!("{} was left behind", p.display()));
            }
        }
        if let Some(l) = live {
            l.release();
        }
    }
}

#[test]
fn a_live_oauth_refresh_lock_past_the_lock_wait_limit_exits_75_and_is_kept() {
    live_lock_past_the_wait_limit_exits_75(oauth_lock);
}

#[test]
fn a_live_config_dir_lock_past_the_lock_wait_limit_exits_75_and_is_kept() {
    live_lock_past_the_wait_limit_exits_75(config_lock);
}

/// While a slow request is in flight, both lock directories exist and their mtimes are
/// refreshed (Claude Code treats a lock untouched for 60 s as abandoned; it refreshes every 5 s).
#[test]
fn held_locks_are_kept_alive_during_a_slow_request() {
    let home = TempHome::new();
    let login = Login::due();
    home.write_creds(&login.doc());
    let server = TokenServer::for_login(&login);
    server.set_delay(Duration::from_millis(7000));
    let running = Cmd::new(&home).server(&server).arg("--once").spawn();
    await_requests(&server, 1);
    let sent = Instant::now();
    let locks = [oauth_lock(&home), config_lock(&home)];
    let mut first: [Option<SystemTime>; 2] = [None, None];
    let mut last: [Option<SystemTime>; 2] = [None, None];
    // Sample until shortly before the answer comes (7 s after the request).
    while sent.elapsed() < Duration::from_millis(6300) {
        for (i, p) in locks.iter().enumerate() {
            let m = mtime_of(p);
            assert!(
                m.is_some(),
                "{} does not exist {:?} into the request",
                p.display(),
                sent.elapsed()
            );
            first[i] = first[i].or(m);
            last[i] = last[i].max(m);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = running.wait();
    out.expect_code(0)
        .check_eq("requests sent", server.count(), 1);
    for (i, p) in locks.iter().enumerate() {
        let (a, b) = (first[i].unwrap(), last[i].unwrap());
        let advanced = b.duration_since(a).unwrap_or_default();
        out.check(
            advanced >= Duration::from_secs(3),
            format!(
                "the mtime of {} advanced only {advanced:?} over a 6 s window (first seen \
                 {a:?}, last {b:?}): the held lock is not being refreshed",
                p.display()
            ),
        );
    }
    check_saved(&out, &home, &server);
    expect_no_lock_dirs(&out, &home);
}

// ---------------------------------------------------------------------------------------------
// Our locks are removed on every exit path

/// Waits for the first request and checks that both refresh locks are held while it is in
/// flight (so "gone afterwards" means removed, not never taken).
#[track_caller]
fn expect_locks_held_during_request(home: &TempHome, server: &TokenServer) {
    await_requests(server, 1);
    for p in [oauth_lock(home), config_lock(home)] {
        assert!(
            p.is_dir(),
            "{} is not held while the request is in flight",
            p.display()
        );
    }
}

#[test]
fn lock_dirs_are_gone_after_invalid_grant() {
    let home = TempHome::new();
    let login = Login::due();
    home.write_creds(&login.doc());
    // The server knows no refresh token: invalid_grant.
    let server = TokenServer::start();
    server.set_delay(Duration::from_millis(1000));
    let before = home.state();
    let running = Cmd::new(&home).server(&server).arg("--once").spawn();
    expect_locks_held_during_request(&home, &server);
    let out = running.wait();
    out.expect_code(77)
        .check_eq("requests sent", server.count(), 1)
        .expect_untouched(&home.creds_path(), &before);
    expect_no_lock_dirs(&out, &home);
}

#[test]
fn lock_dirs_are_gone_after_persistent_server_errors() {
    let home = TempHome::new();
    let login = Login::due();
    home.write_creds(&login.doc());
    let server = TokenServer::for_login(&login);
    server.always(Reply::error(500));
    server.set_delay(Duration::from_millis(500));
    let before = home.state();
    let running = Cmd::new(&home)
        .server(&server)
        .args(["--once", "--retry-budget", "2s"])
        .spawn();
    expect_locks_held_during_request(&home, &server);
    let out = running.wait();
    out.expect_code(75)
        .check(server.count() >= 1, "no request")
        .check(
            out.elapsed < Duration::from_secs(15),
            format!("a 2s budget took {:?}", out.elapsed),
        )
        .expect_untouched(&home.creds_path(), &before);
    expect_no_lock_dirs(&out, &home);
}

/// SIGTERM while the daemon's request is in flight: it waits for the answer, saves it, exits 0
/// and leaves no lock directory.
#[test]
fn lock_dirs_are_gone_after_sigterm_during_a_slow_request() {
    let home = TempHome::new();
    let login = Login::expiring_in(5);
    home.write_creds(&login.doc());
    let server = TokenServer::for_login(&login);
    server.set_delay(Duration::from_millis(3000));
    let d = daemon(&home, &server).spawn();
    expect_locks_held_during_request(&home, &server);
    std::thread::sleep(Duration::from_millis(300));
    let out = stop(d);
    out.check_eq("requests sent", server.count(), 1);
    check_saved(&out, &home, &server);
    expect_no_lock_dirs(&out, &home);
}

/// SIGTERM while the daemon waits for a live `HOME/.claude.lock` (holding its own
/// `.oauth_refresh.lock`, taken first): it stops at once, removes its own lock and leaves the
/// other process's. It says once why it waits.
#[test]
fn sigterm_while_waiting_for_a_live_lock_removes_ours_and_keeps_theirs() {
    let home = TempHome::new();
    let login = Login::expiring_in(-60);
    home.write_creds(&login.doc());
    let server = TokenServer::for_login(&login);
    let theirs = LiveLock::hold(&config_lock(&home));
    let d = daemon(&home, &server).spawn();
    assert!(
        wait_until(SOON, || oauth_lock(&home).is_dir()),
        "the daemon took .oauth_refresh.lock before waiting for .claude.lock"
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert!(is_running(&d), "the daemon keeps waiting");
    assert_eq!(
        server.count(),
        0,
        "a request was sent while .claude.lock was held"
    );
    let t = Instant::now();
    let out = stop(d);
    out.check(
        t.elapsed() < Duration::from_secs(2),
        format!("stopping took {:?}", t.elapsed()),
    )
    .check_eq("requests sent", server.count(), 0)
    .check(
        !oauth_lock(&home).exists(),
        "the daemon's own .oauth_refresh.lock was left behind after SIGTERM",
    )
    .check(
        config_lock(&home).is_dir(),
        "the other process's live .claude.lock was removed",
    )
    .check_eq(
        "log lines saying it waits for .claude.lock",
        lines_with(&out.stderr, ".claude.lock"),
        1,
    );
    theirs.release();
}

/// The daemon waits for a live lock as long as it takes (logging it once), then refreshes.
#[test]
fn the_daemon_waits_for_a_live_lock_then_refreshes() {
    let home = TempHome::new();
    let login = Login::expiring_in(-60);
    home.write_creds(&login.doc());
    let server = TokenServer::for_login(&login);
    let lock = LiveLock::hold(&oauth_lock(&home));
    let d = daemon(&home, &server).spawn();
    std::thread::sleep(Duration::from_millis(2500));
    assert!(is_running(&d), "the daemon keeps waiting for a live lock");
    assert_eq!(
        server.count(),
        0,
        "a request was sent while .oauth_refresh.lock was held"
    );
    lock.release();
    assert!(
        wait_until(SOON, || saved_latest(&home, &server)),
        "refreshed and saved once the lock was released"
    );
    std::thread::sleep(Duration::from_millis(300));
    let out = stop(d);
    out.check_eq("requests sent", server.count(), 1).check_eq(
        "log lines saying it waits for .oauth_refresh.lock",
        lines_with(&out.stderr, ".oauth_refresh.lock"),
        1,
    );
    expect_no_lock_dirs(&out, &home);
}

// ---------------------------------------------------------------------------------------------
// Short holds: never across a backoff sleep

fn no_lock_during_backoff(use_daemon: bool) {
    let home = TempHome::new();
    let login = Login::expiring_in(-60);
    home.write_creds(&login.doc());
    let server = TokenServer::for_login(&login);
    server.push(Reply::error(503).header("Retry-After", "3"));
    let running = if use_daemon {
        daemon(&home, &server).spawn()
    } else {
        Cmd::new(&home).server(&server).arg("--once").spawn()
    };
    await_requests(&server, 1);
    let first = Instant::now();
    std::thread::sleep(Duration::from_millis(400));
    // The retry is at least 3 s after the 503; look for ~2 s in between.
    while first.elapsed() < Duration::from_millis(2500) {
        for p in [oauth_lock(&home), config_lock(&home)] {
            assert!(
                !p.exists(),
                "{} is held during the backoff sleep ({:?} after the 503)",
                p.display(),
                first.elapsed()
            );
        }
        assert_eq!(server.count(), 1, "Retry-After: 3 was not honoured");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = if use_daemon {
        assert!(
            wait_until(SOON, || saved_latest(&home, &server)),
            "the daemon retried and saved"
        );
        std::thread::sleep(Duration::from_millis(200));
        stop(running)
    } else {
        let out = running.wait();
        out.expect_code(0);
        out
    };
    out.check_eq("requests sent", server.count(), 2);
    let reqs = server.requests();
    let gap = reqs[1].received_ms - reqs[0].received_ms;
    out.check(
        gap >= 2900,
        format!("the retry came {gap} ms after a Retry-After: 3"),
    );
    check_saved(&out, &home, &server);
    expect_no_lock_dirs(&out, &home);
}

#[test]
fn no_lock_is_held_during_a_backoff_sleep_once() {
    no_lock_during_backoff(false);
}

#[test]
fn no_lock_is_held_during_a_backoff_sleep_daemon() {
    no_lock_during_backoff(true);
}

// ---------------------------------------------------------------------------------------------
// Merging around another writer

/// Claude Code changes an MCP token while our request is in flight (rewriting the file in
/// place, or by rename): the change survives our write, and our new tokens are in the file.
#[test]
fn an_mcp_oauth_change_made_during_our_request_survives_our_write() {
    for by_rename in [false, true] {
        let home = TempHome::new();
        let login = Login::due();
        home.write_creds(&login.doc());
        let server = TokenServer::for_login(&login);
        server.set_delay(Duration::from_millis(1500));
        let running = Cmd::new(&home).server(&server).arg("--once").spawn();
        await_requests(&server, 1);
        let mut theirs = home.read_creds();
        theirs["mcpOAuth"]["github|5f1c9a3e2b"]["accessToken"] =
            json!("mcp-access-rotated-by-claude-code");
        theirs["mcpOAuth"]["github|5f1c9a3e2b"]["expiresAt"] = json!(1_900_000_000_000i64);
        theirs["mcpOAuth"]["linear|0a1b2c3d4e"] = json!({
            "serverName": "linear",
            "serverUrl": "https://mcp.linear.example.test/sse",
            "accessToken": "mcp-linear-new-login",
            "expiresAt": 1_900_000_000_000i64
        });
        if by_rename {
            replace_atomically(&home.creds_path(), &theirs);
        } else {
            home.write_creds(&theirs);
        }
        let out = running.wait();
        let how = if by_rename { "by rename" } else { "in place" };
        out.expect_code(0)
            .check_eq("requests sent", server.count(), 1);
        let after = home.read_creds();
        out.check_eq(
            format!("mcpOAuth after a change {how} during the request"),
            &after["mcpOAuth"],
            &theirs["mcpOAuth"],
        )
        .check_eq(
            format!("everything but the owned fields (change made {how})"),
            without_owned(&after),
            without_owned(&theirs),
        );
        check_saved(&out, &home, &server);
        out.check_eq("mode", home.mode(), 0o600);
        expect_no_lock_dirs(&out, &home);
    }
}

/// Claude Code rotates the token while our request is in flight, and the server refuses ours as
/// spent: we find its token in the file, exit 0, and leave its write alone.
#[test]
fn invalid_grant_after_another_writer_rotated_the_token_ends_in_success() {
    for (command, by_rename) in [("--once", false), ("refresh", true)] {
        let home = TempHome::new();
        let login = Login::due();
        home.write_creds(&login.doc());
        let server = TokenServer::for_login(&login);
        server.push(Reply::invalid_grant().delay(Duration::from_millis(1500)));
        let running = Cmd::new(&home).server(&server).arg(command).spawn();
        await_requests(&server, 1);
        let other = Login::fresh();
        let mut doc = home.read_creds();
        doc["claudeAiOauth"]["accessToken"] = json!(other.access);
        doc["claudeAiOauth"]["refreshToken"] = json!(other.refresh);
        doc["claudeAiOauth"]["expiresAt"] = json!(other.expires_at);
        if by_rename {
            replace_atomically(&home.creds_path(), &doc);
        } else {
            home.write_creds(&doc);
        }
        let written = home.state();
        let out = running.wait();
        out.expect_code(0)
            .check_eq(format!("requests sent by {command}"), server.count(), 1)
            .check_eq(
                "the refresh token sent",
                server.requests()[0].refresh_token(),
                Some(login.refresh.as_str()),
            )
            .expect_untouched(&home.creds_path(), &written)
            .check_eq(
                "the other writer's refresh token is in the file",
                oauth(&home.read_creds()).get("refreshToken"),
                Some(&json!(other.refresh)),
            )
            .expect_no_secret(&other.secrets());
        expect_no_lock_dirs(&out, &home);
    }
}

// ---------------------------------------------------------------------------------------------
// Blank tokens: logged out

#[test]
fn blank_tokens_give_77_and_no_request() {
    for command in ["--once", "refresh"] {
        let home = TempHome::new();
        home.write_creds(&blank_doc());
        let server = TokenServer::start();
        let before = home.state();
        let out = Cmd::new(&home).server(&server).arg(command).run();
        out.expect_code(77)
            .check_eq(format!("requests sent by {command}"), server.count(), 0)
            .expect_stderr_contains("login")
            .expect_untouched(&home.creds_path(), &before);
        expect_no_lock_dirs(&out, &home);
    }
}

/// The daemon with blank tokens stays up, sends nothing, says so once (not again for every
/// change of the still-blank file), and refreshes once a login arrives.
#[test]
fn the_daemon_waits_quietly_for_a_login_when_tokens_are_blank() {
    let home = TempHome::new();
    let blank = blank_doc();
    home.write_creds(&blank);
    let server = TokenServer::start();
    let d = daemon(&home, &server).spawn();
    std::thread::sleep(Duration::from_millis(800));
    // Claude Code keeps writing the file (MCP tokens) while logged out.
    for i in 0..4 {
        let mut doc = blank.clone();
        doc["unknownTopLevel"]["counter"] = json!(i);
        if i % 2 == 0 {
            replace_atomically(&home.creds_path(), &doc);
        } else {
            home.write_creds(&doc);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let last_blank = home.state();
    std::thread::sleep(Duration::from_millis(1000));
    assert!(is_running(&d), "blank tokens do not stop the daemon");
    assert_eq!(server.count(), 0, "a request was sent with blank tokens");
    assert!(
        home.state() == last_blank,
        "the daemon rewrote the logged-out file"
    );

    // A login arrives.
    let login = Login::expiring_in(-60);
    server.accept_refresh(&login.refresh);
    replace_atomically(&home.creds_path(), &login.doc());
    assert!(
        wait_until(SOON, || saved_latest(&home, &server)),
        "refreshed once a login arrived"
    );
    let out = stop(d);
    out.check_eq("requests sent", server.count(), 1);
    let before_login: String = out
        .stderr
        .lines()
        .take_while(|l| !l.contains("refreshing"))
        .map(|l| format!("{l}\n"))
        .collect();
    let n = lines_with(&before_login, "login");
    out.check(
        (1..=2).contains(&n),
        format!("while logged out, {n} log lines mentioned the login (want 1, at most 2)"),
    );
    expect_no_lock_dirs(&out, &home);
}

// ---------------------------------------------------------------------------------------------
// Half-written files

/// A due document split in two: the first part is not valid JSON.
fn two_chunks(doc: &Value) -> (Vec<u8>, Vec<u8>) {
    let mut text = serde_json::to_string_pretty(doc).expect("JSON");
    text.push('\n');
    let bytes = text.into_bytes();
    let mid = bytes.len() / 2;
    let (a, b) = bytes.split_at(mid);
    assert!(serde_json::from_slice::<Value>(a).is_err());
    (a.to_vec(), b.to_vec())
}

/// Rewrites the file in place (truncate, write) in two chunks `gap` apart, as older Claude Code
/// and editors do; `during` is called repeatedly in the gap.
fn write_in_two_chunks(path: &Path, doc: &Value, gap: Duration, mut during: impl FnMut(&[u8])) {
    let (a, b) = two_chunks(doc);
    let mut f = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .expect("opening the credentials file for an in-place rewrite");
    f.write_all(&a).expect("first chunk");
    f.flush().unwrap();
    let t = Instant::now();
    while t.elapsed() < gap {
        during(&a);
        std::thread::sleep(Duration::from_millis(10));
    }
    f.write_all(&b).expect("second chunk");
    f.sync_all().unwrap();
}

#[test]
fn the_daemon_handles_a_file_written_in_two_chunks() {
    let home = TempHome::new();
    home.write_creds(&Login::fresh().doc());
    let server = TokenServer::start();
    let d = daemon(&home, &server).spawn();
    std::thread::sleep(Duration::from_millis(700));
    let login = Login::expiring_in(-60);
    server.accept_refresh(&login.refresh);
    let doc = login.doc();
    let path = home.creds_path();
    let inode = home.state().inode;
    write_in_two_chunks(&path, &doc, Duration::from_millis(300), |half| {
        assert_eq!(
            fs::read(&path).expect("reading the half-written file"),
            half,
            "the half-written file was changed by someone else than its writer"
        );
        assert_eq!(
            fs::metadata(&path).unwrap().ino(),
            inode,
            "the half-written file was replaced"
        );
    });
    assert!(
        wait_until(SOON, || saved_latest(&home, &server)),
        "the completed file was refreshed"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        is_running(&d),
        "a half-written file does not stop the daemon"
    );
    let out = stop(d);
    out.check_eq("requests sent", server.count(), 1)
        .check_eq(
            "the refresh token sent",
            server.requests()[0].refresh_token(),
            Some(login.refresh.as_str()),
        )
        .check_eq(
            "everything but the owned fields",
            without_owned(&home.read_creds()),
            without_owned(&doc),
        )
        .check(
            !out.stderr.contains("not a usable credentials file")
                && !out.stderr.contains("not valid JSON"),
            "a file half-way through a write was reported as malformed",
        );
    expect_no_lock_dirs(&out, &home);
}

#[test]
fn once_rereads_a_file_caught_half_written() {
    let home = TempHome::new();
    let login = Login::due();
    let doc = login.doc();
    let (a, b) = two_chunks(&doc);
    home.write_raw(&a);
    let server = TokenServer::for_login(&login);
    let running = Cmd::new(&home).server(&server).arg("--once").spawn();
    std::thread::sleep(Duration::from_millis(300));
    let mut f = OpenOptions::new()
        .append(true)
        .open(home.creds_path())
        .expect("open for the second chunk");
    f.write_all(&b).expect("second chunk");
    f.sync_all().unwrap();
    drop(f);
    let out = running.wait();
    out.expect_code(0)
        .expect_silent()
        .check_eq("requests sent", server.count(), 1)
        .check_eq(
            "everything but the owned fields",
            without_owned(&home.read_creds()),
            without_owned(&doc),
        );
    check_saved(&out, &home, &server);
    expect_no_lock_dirs(&out, &home);
}

// ---------------------------------------------------------------------------------------------
// Bind-mounted file: rename fails, the file is written in place

/// The original written with a wider indent than the program's, so the rewrite is shorter and
/// any tail of the old content left behind would break the JSON.
fn write_wide(path: &Path, doc: &Value) {
    let text = serde_json::to_string_pretty(doc).expect("JSON");
    let mut wide = String::new();
    for line in text.lines() {
        let body = line.trim_start_matches(' ');
        let indent = line.len() - body.len();
        wide.push_str(&" ".repeat(indent * 6));
        wide.push_str(body);
        wide.push('\n');
    }
    write_raw_at(path, wide.as_bytes());
}

#[test]
fn rename_failing_with_ebusy_or_exdev_writes_in_place() {
    for errno in ["16", "18"] {
        let home = TempHome::new();
        let login = Login::due();
        let doc = login.doc();
        write_wide(&home.creds_path(), &doc);
        let server = TokenServer::for_login(&login);
        let before = home.state();
        let out = Cmd::new(&home)
            .server(&server)
            .env("CLAUDE_TOKEND_TEST_RENAME_ERRNO", errno)
            .args(["--once", "-v"])
            .run();
        out.expect_code(0)
            .check_eq(format!("requests sent (errno {errno})"), server.count(), 1);
        let after = home.state();
        out.check_eq(
            format!(
                "inode (errno {errno}: the file must be written in place, not replaced; if this \
                 fails, is the binary built with the test-seams feature?)"
            ),
            after.inode,
            before.inode,
        )
        .check_eq("mode", after.mode, 0o600)
        .check(
            out.stderr.contains("in place"),
            "stderr (-v) should say the file is written in place",
        );
        let written = read_json(&home.creds_path());
        out.check_eq(
            "everything but the owned fields",
            without_owned(&written),
            without_owned(&doc),
        );
        check_saved(&out, &home, &server);
        out.check_eq(
            "refreshToken",
            oauth(&written).get("refreshToken"),
            server.last_issued().refresh.map(Value::from).as_ref(),
        );
        // No backup and no temp file left.
        expect_no_lock_dirs(&out, &home);
    }
}

/// The daemon warns once about the fallback, not on every write.
#[test]
fn the_daemon_warns_about_the_in_place_fallback_once() {
    let home = TempHome::new();
    let login = Login::expiring_in(-60);
    home.write_creds(&login.doc());
    let server = TokenServer::for_login(&login);
    let inode = home.state().inode;
    let d = daemon(&home, &server)
        .env("CLAUDE_TOKEND_TEST_RENAME_ERRNO", "16")
        .spawn();
    assert!(
        wait_until(SOON, || saved_latest(&home, &server)),
        "first refresh saved"
    );
    std::thread::sleep(Duration::from_millis(300));
    // Inside the 60 s floor, SIGUSR1 refreshes when the floor ends.
    send_signal(&d, libc::SIGUSR1);
    assert!(
        wait_until(Duration::from_secs(90), || server.count() == 2
            && saved_latest(&home, &server)),
        "the forced refresh was saved"
    );
    std::thread::sleep(Duration::from_millis(300));
    let out = stop(d);
    out.check_eq("requests sent", server.count(), 2)
        .check_eq("inode", home.state().inode, inode)
        .check_eq("mode", home.mode(), 0o600)
        .check_eq(
            "log lines about writing in place",
            lines_with(&out.stderr, "in place"),
            1,
        );
    expect_no_lock_dirs(&out, &home);
}

// ---------------------------------------------------------------------------------------------
// Claude Code's storage-write lock

/// A live `.storage-write.lock` delays our write (the request completes, the file changes only
/// after the lock is removed).
#[test]
fn a_live_storage_write_lock_delays_our_write_until_removed() {
    let home = TempHome::new();
    let login = Login::due();
    home.write_creds(&login.doc());
    let server = TokenServer::for_login(&login);
    let lock = LiveLock::hold(&write_lock(&home));
    let before = home.state();
    let running = Cmd::new(&home).server(&server).arg("--once").spawn();
    await_requests(&server, 1);
    let answered = Instant::now();
    while answered.elapsed() < Duration::from_millis(2500) {
        let now = home.state();
        assert!(
            now.bytes == before.bytes && now.inode == before.inode,
            "the file was written {:?} after the answer while .storage-write.lock was held",
            answered.elapsed()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        is_running(&running),
        "--once should be waiting for .storage-write.lock"
    );
    let released = Instant::now();
    lock.release();
    let out = running.wait();
    out.expect_code(0)
        .check_eq("requests sent", server.count(), 1)
        .check(
            released.elapsed() < Duration::from_secs(5),
            format!(
                "took {:?} to write after the lock was released",
                released.elapsed()
            ),
        );
    check_saved(&out, &home, &server);
    expect_no_lock_dirs(&out, &home);
}

/// A `.storage-write.lock` untouched for 30 s (stale after 15 s) is taken over at once, not
/// waited out.
#[test]
fn a_stale_storage_write_lock_is_taken_over() {
    let home = TempHome::new();
    let login = Login::due();
    home.write_creds(&login.doc());
    let server = TokenServer::for_login(&login);
    abandoned_lock(&write_lock(&home), 30);
    let out = Cmd::new(&home).server(&server).arg("--once").run();
    out.expect_code(0)
        .check_eq("requests sent", server.count(), 1)
        .check(
            out.elapsed < Duration::from_secs(10),
            format!(
                "a stale .storage-write.lock took {:?} to take over",
                out.elapsed
            ),
        );
    check_saved(&out, &home, &server);
    expect_no_lock_dirs(&out, &home);
}

// ---------------------------------------------------------------------------------------------
// Refresh-token expiry

const DAY_MS: i64 = 86_400_000;

fn with_login_end(login: &Login, at: i64) -> Value {
    let mut doc = login.doc();
    doc["claudeAiOauth"]["refreshTokenExpiresAt"] = json!(at);
    doc
}

#[test]
fn status_shows_when_the_login_itself_ends() {
    // Far off: shown, no warning.
    let home = TempHome::new();
    let login = Login::fresh();
    let at = now_ms() + 20 * DAY_MS;
    home.write_creds(&with_login_end(&login, at));
    let server = TokenServer::start();
    let out = Cmd::new(&home).server(&server).arg("status").run();
    out.expect_code(0)
        .check(
            out.stdout.contains("log in again before"),
            "status should say when to log in again",
        )
        .check(
            !out.stderr.contains("log in again"),
            "no warning 20 days before the login ends",
        )
        .check_eq("requests sent", server.count(), 0);
    let out = Cmd::new(&home)
        .server(&server)
        .args(["status", "--json"])
        .run();
    out.expect_code(0);
    let v: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("status --json is not JSON ({e})\n{}", out.context()));
    out.check_eq(
        "refreshTokenExpiresAt",
        v.get("refreshTokenExpiresAt"),
        Some(&json!(at)),
    );

    // Within three days: a warning.
    let home = TempHome::new();
    home.write_creds(&with_login_end(&login, now_ms() + 2 * DAY_MS));
    let out = Cmd::new(&home).server(&server).arg("status").run();
    out.expect_code(0)
        .check(
            out.stdout.contains("log in again before"),
            "status should say when to log in again",
        )
        .expect_stderr_contains("log in again");
}

/// Runs the daemon on a fresh login that ends `days` from now; returns its output and what
/// arrived on NOTIFY_SOCKET.
fn daemon_with_login_ending_in(days: i64, want_warning: bool) -> (Out, String) {
    let home = TempHome::new();
    let login = Login::fresh();
    home.write_creds(&with_login_end(&login, now_ms() + days * DAY_MS));
    let server = TokenServer::start();
    let sock_path = home.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind NOTIFY_SOCKET");
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let d = daemon(&home, &server)
        .env("NOTIFY_SOCKET", &sock_path)
        .spawn();
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    let limit = if want_warning {
        Duration::from_secs(5)
    } else {
        Duration::from_millis(2000)
    };
    let start = Instant::now();
    while start.elapsed() < limit && !(want_warning && seen.contains("log in again")) {
        if let Ok(n) = sock.recv(&mut buf) {
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            seen.push('\n');
        }
    }
    let out = stop(d);
    while let Ok(n) = sock.recv(&mut buf) {
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        seen.push('\n');
    }
    out.check_eq("requests sent", server.count(), 0);
    (out, seen)
}

#[test]
fn the_daemon_warns_when_the_login_ends_within_three_days() {
    let (out, seen) = daemon_with_login_ending_in(2, true);
    let status: Vec<&str> = seen.lines().filter(|l| l.starts_with("STATUS=")).collect();
    out.expect_stderr_contains("log in again")
        .check(
            status.iter().any(|l| l.contains("log in again")),
            format!("a STATUS= line should say to log in again: {status:?}"),
        )
        .check_eq(
            "warning lines in the log",
            lines_with(&out.stderr, "log in again"),
            1,
        );

    let (out, seen) = daemon_with_login_ending_in(10, false);
    out.check(
        seen.contains("STATUS="),
        format!("no STATUS= line arrived: {seen:?}"),
    )
    .check(
        !out.stderr.contains("log in again") && !seen.contains("log in again"),
        format!("a warning 10 days before the login ends: {seen:?}"),
    );
}
