//! "Never waste, never hammer" (CONTRACT.md), one-shot commands: the 60 s floor and the
//! half-lifetime due time seen from `--once`; a grant in hand kept and its save retried;
//! compare-and-swap at the write; Retry-After capped; every held lock heartbeated and a fresh
//! Claude Code lock outwaited to its takeover; hostile numbers; a closed stdout; `logout` under
//! `.storage-write.lock`; `login` replacing `claudeAiOauth` whole (the last four in
//! `waste/edges.rs`). The daemon's side is in `waste_daemon.rs`; both share the helpers here.

use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use claude_tokend_e2e::*;
use serde_json::{Value, json};

mod edges;

/// Generous bounds: the machine is shared and slow; a passing run takes a fraction of these.
pub(crate) const SOON: Duration = Duration::from_secs(15);

/// The rename seam (debug builds): the final rename fails with this errno...
pub(crate) const RENAME_ERRNO: &str = "CLAUDE_TOKEND_TEST_RENAME_ERRNO";
/// ...only while the file this names exists.
pub(crate) const RENAME_FAIL_WHILE: &str = "CLAUDE_TOKEND_TEST_RENAME_FAIL_WHILE";
/// EACCES: "rename refused".
pub(crate) const EACCES: &str = "13";

// ---------------------------------------------------------------------------------------------
// Helpers shared with waste_daemon.rs

pub(crate) fn oauth_lock(home: &TempHome) -> PathBuf {
    home.claude_dir().join(".oauth_refresh.lock")
}

pub(crate) fn config_lock(home: &TempHome) -> PathBuf {
    home.path().join(".claude.lock")
}

pub(crate) fn write_lock(home: &TempHome) -> PathBuf {
    home.claude_dir().join(".storage-write.lock")
}

/// The file as it is now, tolerating a moment where it is missing or caught mid-write.
pub(crate) fn try_doc(home: &TempHome) -> Option<Value> {
    fs::read(home.creds_path())
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

/// True once the file holds the access token the server issued last.
pub(crate) fn saved_latest(home: &TempHome, server: &TokenServer) -> bool {
    let Some(issued) = server.issued().last().cloned() else {
        return false;
    };
    try_doc(home).is_some_and(|d| d["claudeAiOauth"]["accessToken"] == json!(issued.access))
}

/// The file holds the pair the server issued last, with every other key of `doc`.
#[track_caller]
pub(crate) fn check_saved(out: &Out, home: &TempHome, server: &TokenServer, doc: &Value) {
    out.expect_latest_pair("the file", &home.read_creds(), server, doc);
}

/// The refresh tokens the requests carried, in order.
pub(crate) fn sent_tokens(server: &TokenServer) -> Vec<String> {
    server
        .requests()
        .iter()
        .map(|r| r.refresh_token().unwrap_or_default().to_owned())
        .collect()
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

/// Rewrites the file (by rename, as Claude Code does) changing only an MCP token.
pub(crate) fn change_mcp_only(home: &TempHome, i: usize) {
    let mut doc = home.read_creds();
    doc["mcpOAuth"]["github|5f1c9a3e2b"]["accessToken"] = json!(format!("mcp-access-rotated-{i}"));
    replace_atomically(&home.creds_path(), &doc);
}

/// A server for `login` whose successful refreshes grant `expires_in` seconds.
pub(crate) fn server_granting(login: &Login, expires_in: u64) -> TokenServer {
    let server = TokenServer::for_login(login);
    server.set_policy(GrantPolicy {
        expires_in: Some(expires_in),
        ..GrantPolicy::default()
    });
    server
}

#[track_caller]
pub(crate) fn expect_no_panic(out: &Out) {
    out.check(
        !out.stderr.contains("panicked") && out.code != 101 && out.code != 134,
        "the program panicked or aborted",
    );
}

pub(crate) fn once(home: &TempHome, server: &TokenServer) -> Cmd {
    Cmd::new(home).server(server).arg("--once")
}

pub(crate) fn setup() -> (TempHome, Login, Value) {
    let home = TempHome::new();
    let login = Login::due();
    let doc = login.doc();
    home.write_creds(&doc);
    (home, login, doc)
}

// ---------------------------------------------------------------------------------------------
// The floor and the half-lifetime due time

#[test]
fn once_after_a_ten_minute_grant_sends_nothing_more_even_eight_at_a_time() {
    let (home, login, doc) = setup();
    let server = server_granting(&login, 600);
    let out = once(&home, &server).run();
    out.expect_code(0).check_eq("requests", server.count(), 1);
    check_saved(&out, &home, &server, &doc);
    let runs: Vec<Running> = (0..8).map(|_| once(&home, &server).spawn()).collect();
    for r in runs {
        let out = r.wait();
        out.expect_code(0).expect_silent().check_eq(
            "requests after a 10-minute grant",
            server.count(),
            1,
        );
    }
    check_saved(&out, &home, &server, &doc);
}

#[test]
fn the_refresh_command_is_exempt_from_the_floor() {
    let (home, login, doc) = setup();
    let server = TokenServer::for_login(&login);
    for n in 1..=2 {
        let out = Cmd::new(&home).server(&server).arg("refresh").run();
        out.expect_code(0).check_eq("requests", server.count(), n);
        check_saved(&out, &home, &server, &doc);
    }
    let first = server.issued()[0].refresh.clone().unwrap();
    check_eq(
        "refresh tokens sent",
        sent_tokens(&server),
        vec![login.refresh, first],
    );
}

// ---------------------------------------------------------------------------------------------
// A grant in hand is kept

#[test]
fn once_keeps_a_grant_whose_save_fails_and_saves_it_when_it_can() {
    let (home, login, doc) = setup();
    let server = TokenServer::for_login(&login);
    let marker = home.path().join("rename-refused");
    fs::write(&marker, b"").unwrap();
    let running = once(&home, &server)
        .env(RENAME_ERRNO, EACCES)
        .env(RENAME_FAIL_WHILE, &marker)
        .args(["--retry-budget", "30s"])
        .spawn();
    await_requests(&server, 1);
    std::thread::sleep(Duration::from_secs(3));
    fs::remove_file(&marker).unwrap();
    let out = running.wait();
    out.expect_code(0).check_eq(
        "refresh tokens sent",
        sent_tokens(&server),
        vec![login.refresh],
    );
    check_saved(&out, &home, &server, &doc);
    out.check_eq("left behind", leftovers(&home), Vec::<String>::new());
}

#[test]
fn once_whose_grant_cannot_be_saved_says_the_login_may_be_lost_and_never_resends() {
    let (home, login, _) = setup();
    let server = TokenServer::for_login(&login);
    let out = once(&home, &server)
        .env(RENAME_ERRNO, EACCES)
        .args(["--retry-budget", "3s"])
        .run();
    out.expect_code(1)
        .check(
            out.stderr.contains("saved") && out.stderr.contains("lost"),
            "stderr should say the tokens could not be saved and the login may be lost",
        )
        .check_eq(
            "refresh tokens sent",
            sent_tokens(&server),
            vec![login.refresh],
        )
        .expect_no_secret(&[server.last_issued().access]);
}

#[test]
fn a_file_made_malformed_during_the_request_is_copied_aside_and_the_grant_saved() {
    let (home, login, doc) = setup();
    let server = TokenServer::for_login(&login);
    server.set_delay(Duration::from_millis(1500));
    let running = once(&home, &server).spawn();
    await_requests(&server, 1);
    let garbage = b"\x00\xff this is not JSON {{{ \n".to_vec();
    home.write_raw(&garbage);
    let out = running.wait();
    out.expect_code(0).check_eq("requests", server.count(), 1);
    let copies: Vec<String> = home
        .list_dir()
        .into_iter()
        .filter(|n| n.starts_with(".credentials.json.malformed-"))
        .collect();
    out.check_eq("copies of the malformed bytes", copies.len(), 1);
    let stamp = &copies[0][".credentials.json.malformed-".len()..];
    let shaped = stamp.len() == 16
        && stamp.char_indices().all(|(i, c)| match i {
            8 => c == 'T',
            15 => c == 'Z',
            _ => c.is_ascii_digit(),
        });
    out.check(
        shaped,
        format!("{:?} is not <file>.malformed-yyyymmddThhmmssZ", copies[0]),
    )
    .check(
        out.stderr.contains(&copies[0]),
        format!("stderr should name the copy {}", copies[0]),
    );
    let copy = home.claude_dir().join(&copies[0]);
    out.check_eq("the copy's bytes", fs::read(&copy).unwrap(), garbage)
        .check_eq("the copy's mode", mode_of(&copy), 0o600)
        .check_eq("the file's mode", home.mode(), 0o600);
    check_saved(&out, &home, &server, &doc);
}

// ---------------------------------------------------------------------------------------------
// Compare-and-swap at the write

/// `--once` on a due login with a 1.5 s answer; `meanwhile` changes the file while the request
/// is in flight. Returns the run.
fn cas(meanwhile: impl FnOnce(&TempHome, &Login)) -> (TempHome, Login, TokenServer, Out) {
    let (home, login, _) = setup();
    let server = TokenServer::for_login(&login);
    server.set_delay(Duration::from_millis(1500));
    let running = once(&home, &server).spawn();
    await_requests(&server, 1);
    meanwhile(&home, &login);
    let out = running.wait();
    out.check_eq("requests", server.count(), 1);
    (home, login, server, out)
}

#[test]
fn cas_another_login_written_meanwhile_is_adopted_untouched() {
    let mut written = Vec::new();
    let (home, _, _, out) = cas(|home, _| {
        let other = Login::fresh();
        let mut doc = home.read_creds();
        let o = doc["claudeAiOauth"].as_object_mut().unwrap();
        o.insert("accessToken".into(), json!(other.access));
        o.insert("refreshToken".into(), json!(other.refresh));
        o.insert("expiresAt".into(), json!(other.expires_at));
        o.insert("tokenAccount".into(), json!({"uuid": "other-account"}));
        replace_atomically(&home.creds_path(), &doc);
        written = home.raw_bytes();
    });
    out.expect_code(0).check_eq(
        "the file is the other writer's",
        String::from_utf8_lossy(&home.raw_bytes()),
        String::from_utf8_lossy(&written),
    );
}

#[test]
fn cas_a_logout_meanwhile_is_not_undone() {
    let (home, _, _, out) = cas(|home, _| {
        let mut doc = home.read_creds();
        doc.as_object_mut().unwrap().remove("claudeAiOauth");
        replace_atomically(&home.creds_path(), &doc);
    });
    let after = home.read_creds();
    out.expect_code(77)
        .expect_stderr_contains("login")
        .check(
            after.get("claudeAiOauth").is_none(),
            "the logout was undone",
        )
        .check_eq(
            "mcpOAuth",
            &after["mcpOAuth"],
            &Login::due().doc()["mcpOAuth"],
        );
}

#[test]
fn cas_a_file_deleted_meanwhile_is_not_recreated() {
    let (home, _, _, out) = cas(|home, _| fs::remove_file(home.creds_path()).unwrap());
    out.expect_code(77)
        .check(
            !home.creds_path().exists(),
            "the deleted file was re-created",
        )
        .check_eq("temp files", temp_files(&home), Vec::<PathBuf>::new());
}

#[test]
fn cas_blank_tokens_written_meanwhile_are_filled() {
    let mut blanked = Value::Null;
    let (home, _, server, out) = cas(|home, _| {
        let mut doc = home.read_creds();
        doc["claudeAiOauth"]["accessToken"] = json!("");
        doc["claudeAiOauth"]["refreshToken"] = json!("");
        doc["claudeAiOauth"]["expiresAt"] = json!(0);
        replace_atomically(&home.creds_path(), &doc);
        blanked = doc;
    });
    out.expect_code(0);
    check_saved(&out, &home, &server, &blanked);
}

#[test]
fn cas_an_mcp_change_meanwhile_is_kept_with_the_new_tokens() {
    let (home, _, server, out) = cas(|home, _| change_mcp_only(home, 1));
    out.expect_code(0).check_eq(
        "the MCP change",
        &home.read_creds()["mcpOAuth"]["github|5f1c9a3e2b"]["accessToken"],
        &json!("mcp-access-rotated-1"),
    );
    let mut want = Login::due().doc();
    want["mcpOAuth"]["github|5f1c9a3e2b"]["accessToken"] = json!("mcp-access-rotated-1");
    check_saved(&out, &home, &server, &want);
}

// ---------------------------------------------------------------------------------------------
// Retry-After, locks

#[test]
fn once_with_a_year_long_retry_after_exits_75_at_once() {
    let (home, login, _) = setup();
    let server = TokenServer::for_login(&login);
    server.always(Reply::error(429).header("Retry-After", "31536000"));
    let out = once(&home, &server).args(["--retry-budget", "5s"]).run();
    expect_no_panic(&out);
    out.expect_code(75)
        .check_eq("requests", server.count(), 1)
        .check(
            out.elapsed < Duration::from_secs(4),
            format!("took {:?} with a 5 s budget", out.elapsed),
        );
}

#[test]
fn a_lock_held_while_waiting_for_the_next_is_heartbeated() {
    let (home, login, doc) = setup();
    let server = TokenServer::for_login(&login);
    let theirs = LiveLock::hold_every(&config_lock(&home), Duration::from_secs(2));
    let start = Instant::now();
    let running = once(&home, &server).spawn();
    let taken = wait_until(SOON, || oauth_lock(&home).is_dir());
    std::thread::sleep(Duration::from_secs(11).saturating_sub(start.elapsed()));
    let age = fs::metadata(oauth_lock(&home))
        .and_then(|m| m.modified())
        .map(|t| SystemTime::now().duration_since(t).unwrap_or_default());
    let early = server.count();
    std::thread::sleep(Duration::from_secs(14).saturating_sub(start.elapsed()));
    theirs.release();
    let out = running.wait();
    out.check(
        taken,
        "--once did not take .oauth_refresh.lock before waiting for .claude.lock",
    )
    .check_eq("requests while .claude.lock was held", early, 0)
    .check(
        age.as_ref().is_ok_and(|a| *a < Duration::from_secs(6)),
        format!(".oauth_refresh.lock 11 s into the wait: last touched {age:?} ago"),
    )
    .expect_code(0)
    .check_eq("requests", server.count(), 1);
    check_saved(&out, &home, &server, &doc);
    out.check_eq("left behind", leftovers(&home), Vec::<String>::new());
}

#[test]
fn once_outwaits_a_fresh_lock_to_its_takeover_beyond_the_budget() {
    let (home, login, doc) = setup();
    let server = TokenServer::for_login(&login);
    fs::create_dir(oauth_lock(&home)).unwrap();
    set_mtime(
        &oauth_lock(&home),
        SystemTime::now() - Duration::from_secs(50),
    );
    let out = once(&home, &server).args(["--retry-budget", "2s"]).run();
    out.expect_code(0)
        .check_eq("requests", server.count(), 1)
        .check(
            out.elapsed >= Duration::from_secs(9),
            format!(
                "a lock 50 s old is live: taken over after only {:?}",
                out.elapsed
            ),
        );
    check_saved(&out, &home, &server, &doc);
    out.check_eq("left behind", leftovers(&home), Vec::<String>::new());
}
