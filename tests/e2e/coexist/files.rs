//! The file itself: half-written documents, the bind-mount fallback, Claude Code's
//! storage-write lock, and the refresh-token expiry warning.

use super::*;

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
