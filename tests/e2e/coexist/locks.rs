//! Claude Code's refresh locks: waited for while live, taken over when stale, kept alive, and
//! removed on every exit path; never held across a backoff sleep.

use super::*;

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
