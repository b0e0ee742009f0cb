//! "A spent token is spent for every process" and "The program's own lock file stays"
//! (CONTRACT.md, "Interrupted, slow or absent"): while one claude-tokend holds the answer to a
//! refresh token it sent (its save failed, so the store still shows the old token), no other
//! claude-tokend sends that token again; a sender that died, or whose request failed, holds
//! nothing back; and `<target>.lock` is never removed and is 0600.

use std::time::Duration;

use claude_tokend_e2e::*;

use crate::waste::{
    EACCES, RENAME_ERRNO, RENAME_FAIL_WHILE, SOON, await_requests, check_saved, saved_latest,
    sent_tokens, setup,
};

/// The program's own flock file beside the credentials file.
fn lock_file(home: &TempHome) -> std::path::PathBuf {
    home.claude_dir().join(".credentials.json.lock")
}

/// The daemon on `home`, against `server`.
fn daemon(home: &TempHome, server: &TokenServer) -> Cmd {
    Cmd::new(home)
        .server(server)
        .timeout(Duration::from_secs(60))
}

fn finish(d: Running) -> Out {
    if is_running(&d) { stop(d) } else { d.wait() }
}

/// The reported bug: the daemon holds a grant it could not save (the rename is refused), the
/// file still shows the old refresh token, and a `--once` run meanwhile must not send it again.
/// It exits 75 naming the daemon's pid; once the rename works, the daemon saves its grant: one
/// request in all.
#[test]
fn once_does_not_resend_a_token_the_daemon_spent_and_could_not_save_yet() {
    let (home, login, doc) = setup();
    let server = TokenServer::for_login(&login);
    // Long enough that `--once` is surely waiting for the flock when the answer arrives.
    server.set_delay(Duration::from_millis(300));
    let marker = home.path().join("rename-refused");
    std::fs::write(&marker, b"").unwrap();
    let d = daemon(&home, &server)
        .env(RENAME_ERRNO, EACCES)
        .env(RENAME_FAIL_WHILE, &marker)
        .spawn();
    let daemon_pid = d.id();
    // The server has answered (its grant is issued): the daemon holds the flock from before
    // its request until its save fails, so `--once` reads the store only after that failure.
    assert!(
        wait_until(SOON, || !server.issued().is_empty()),
        "the daemon sent no request"
    );
    let once = Cmd::new(&home).server(&server).arg("--once").run();
    let old_still_stored = home.read_creds()["claudeAiOauth"]["refreshToken"] == login.refresh;
    std::fs::remove_file(&marker).unwrap();
    let saved = wait_until(Duration::from_secs(40), || saved_latest(&home, &server));
    let out = finish(d);
    once.check(
        old_still_stored,
        "the store no longer held the old token: the scenario did not happen",
    )
    .check_eq(
        "refresh tokens sent (the spent one only once)",
        sent_tokens(&server),
        vec![login.refresh.clone()],
    )
    .expect_code(75)
    .expect_stderr_contains(&format!("pid {daemon_pid}"))
    .expect_stderr_contains("has not saved");
    out.check(saved, "the daemon never saved its grant");
    check_saved(&out, &home, &server, &doc);
}

/// The other way round: a `--once` run holds the grant it could not save yet (retrying within
/// its budget); a daemon started meanwhile does not send the token, backs off, and settles on
/// the tokens `--once` saves once it can.
#[test]
fn the_daemon_does_not_resend_a_token_a_one_shot_run_spent_and_could_not_save_yet() {
    let (home, login, doc) = setup();
    let server = TokenServer::for_login(&login);
    let marker = home.path().join("rename-refused");
    std::fs::write(&marker, b"").unwrap();
    let once = Cmd::new(&home)
        .server(&server)
        .args(["--once", "--retry-budget", "30s"])
        .env(RENAME_ERRNO, EACCES)
        .env(RENAME_FAIL_WHILE, &marker)
        .spawn();
    let once_pid = once.id();
    assert!(
        wait_until(SOON, || !server.issued().is_empty()),
        "--once sent no request"
    );
    let d = daemon(&home, &server).spawn();
    // The daemon's first attempt comes at once (the login is due); give it a few backoffs.
    std::thread::sleep(Duration::from_secs(3));
    let sent_meanwhile = sent_tokens(&server);
    std::fs::remove_file(&marker).unwrap();
    let once = once.wait();
    let saved = wait_until(SOON, || saved_latest(&home, &server));
    // The daemon, re-reading, finds the saved tokens fresh: still nothing to send.
    std::thread::sleep(Duration::from_secs(2));
    let out = finish(d);
    once.expect_code(0);
    out.check_eq(
        "refresh tokens sent while --once held the grant",
        sent_meanwhile,
        vec![login.refresh.clone()],
    )
    .check(saved, "--once never saved its grant")
    .check_eq("requests", server.count(), 1)
    .expect_stderr_contains(&format!("another claude-tokend (pid {once_pid})"));
    check_saved(&out, &home, &server, &doc);
}

/// A sender that died mid-request (here `--once`, killed as `kill -9` would, while the server
/// delays its answer) left its record behind; it holds nothing: the next run sends the token.
#[test]
fn a_dead_senders_record_does_not_hold_the_token() {
    let (home, login, doc) = setup();
    let server = TokenServer::for_login(&login);
    // The crashed run's request is answered 503 (after it died): the token stays good.
    server.push(Reply::error(503).delay(Duration::from_secs(2)));
    let crashed = Cmd::new(&home)
        .server(&server)
        .arg("--once")
        .env("CLAUDE_TOKEND_TEST_CRASH_AT", "request-sent")
        .run();
    crashed.check_eq("the crashed run's exit (SIGABRT)", crashed.code, 134);
    await_requests(&server, 1);
    let out = Cmd::new(&home).server(&server).arg("--once").run();
    out.expect_code(0).check_eq(
        "refresh tokens sent",
        sent_tokens(&server),
        vec![login.refresh.clone(), login.refresh.clone()],
    );
    check_saved(&out, &home, &server, &doc);
}

/// A request that failed leaves no grant anywhere, so its sender holds nothing back: while the
/// daemon backs off after a 503 (Retry-After: 30), a `--once` run refreshes. (An expired
/// token: one that still lasts would be held back by the pause the 503 asked for, which
/// token_outage.rs tests.)
#[test]
fn a_failed_request_holds_nothing_back() {
    let (home, login, _) = setup();
    let login = Login {
        expires_at: now_ms() - 3_600_000,
        ..login
    };
    let doc = login.doc();
    home.write_creds(&doc);
    let server = TokenServer::for_login(&login);
    server.push(Reply::error(503).header("Retry-After", "30"));
    let d = daemon(&home, &server).spawn();
    // The daemon holds the flock from before its request until it has the 503: `--once`
    // reads the lock file only after that.
    await_requests(&server, 1);
    let out = Cmd::new(&home).server(&server).arg("--once").run();
    let daemon_out = finish(d);
    out.expect_code(0).check_eq(
        "refresh tokens sent",
        sent_tokens(&server),
        vec![login.refresh.clone(), login.refresh.clone()],
    );
    check_saved(&daemon_out, &home, &server, &doc);
}

/// A pid that lives but is not claude-tokend (a reused pid) holds nothing back either. The
/// record is written as the program writes it: `spent <fingerprint> <pid> -`.
#[test]
fn a_live_process_that_is_not_claude_tokend_holds_nothing_back() {
    let (home, login, doc) = setup();
    let server = TokenServer::for_login(&login);
    let mut other = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .expect("start sleep");
    let record = format!(
        "spent {} {} -\n",
        token_fingerprint(&login.refresh),
        other.id()
    );
    write_raw_at(&lock_file(&home), record.as_bytes());
    let out = Cmd::new(&home).server(&server).arg("--once").run();
    let _ = other.kill();
    let _ = other.wait();
    out.expect_code(0).check_eq("requests", server.count(), 1);
    check_saved(&out, &home, &server, &doc);
}

/// The flock file outlives everything: a refresh, a logout that deletes the credentials file,
/// a crash; it is 0600 whatever the umask it was created under.
#[test]
fn the_lock_file_is_never_removed_and_is_0600() {
    let (home, login, _doc) = setup();
    let server = TokenServer::for_login(&login);
    let out = Cmd::new(&home)
        .server(&server)
        .arg("--once")
        .umask(0o277)
        .run();
    out.expect_code(0)
        .check(lock_file(&home).is_file(), "no lock file after a refresh")
        .check_eq(
            "the lock file's mode (created under umask 277)",
            format!("{:o}", mode_of(&lock_file(&home))),
            "600".to_owned(),
        );
    // Only the login in the file: logout deletes the file itself.
    let only_login = serde_json::json!({"claudeAiOauth": home.read_creds()["claudeAiOauth"]});
    home.write_creds(&only_login);
    let out = Cmd::new(&home).args(["logout", "--yes"]).run();
    out.expect_code(0)
        .check(!home.creds_path().exists(), "logout kept the file")
        .check(lock_file(&home).is_file(), "logout removed the lock file");
    // A crash mid-refresh, then the next run tidying up after it: the lock file stays.
    let login = Login::due();
    home.write_creds(&login.doc());
    server.accept_refresh(&login.refresh);
    Cmd::new(&home)
        .server(&server)
        .arg("--once")
        .env("CLAUDE_TOKEND_TEST_CRASH_AT", "temp-created")
        .run();
    let out = Cmd::new(&home).server(&server).arg("--once").run();
    out.expect_code(0)
        .check(lock_file(&home).is_file(), "the lock file was removed")
        .check_eq(
            "the lock file's mode",
            format!("{:o}", mode_of(&lock_file(&home))),
            "600".to_owned(),
        );
}
