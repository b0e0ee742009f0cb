//! Locks around a Keychain login: Claude Code's lock directories in its credentials directory
//! (`HOME/.claude/.oauth_refresh.lock`, `HOME/.claude.lock`, `.storage-write.lock`) and the
//! program's own flock `HOME/.claude/.credentials.json.lock`, as for the file; and a locked
//! keychain (`security` exits 36): transient, retried, a message to unlock, nothing lost.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use claude_tokend_e2e::*;

use super::*;

#[test]
fn a_live_claude_code_refresh_lock_holds_off_once_until_removed() {
    for lock_of in [
        (|h: &TempHome| h.claude_dir().join(".oauth_refresh.lock")) as fn(&TempHome) -> PathBuf,
        |h: &TempHome| h.path().join(".claude.lock"),
    ] {
        let login = Login::due();
        let doc = item_doc(&login);
        let s = Setup::with(&doc);
        let server = TokenServer::for_login(&login);
        let lock = LiveLock::hold(&lock_of(&s.home));
        let running = s.once(&server).spawn();
        std::thread::sleep(Duration::from_millis(2500));
        assert_eq!(
            server.count(),
            0,
            "a request was sent while {} was held",
            lock_of(&s.home).display()
        );
        assert!(
            is_running(&running),
            "--once should be waiting for the lock"
        );
        let released = Instant::now();
        lock.release();
        let out = running.wait();
        out.expect_code(0)
            .expect_silent()
            .check_eq("requests", server.count(), 1)
            .check(
                released.elapsed() < Duration::from_secs(5),
                format!("took {:?} after the release", released.elapsed()),
            );
        check_refreshed(&out, &s, &server, &doc);
        expect_no_file_and_no_lock_dirs(&out, &s.home);
    }
}

#[test]
fn a_live_storage_write_lock_delays_the_write_to_the_item() {
    let login = Login::due();
    let doc = item_doc(&login);
    let s = Setup::with(&doc);
    let server = TokenServer::for_login(&login);
    let lock = LiveLock::hold(&s.home.claude_dir().join(".storage-write.lock"));
    let before = s.raw();
    let running = s.once(&server).spawn();
    await_requests(&server, 1);
    let answered = Instant::now();
    while answered.elapsed() < Duration::from_millis(2500) {
        assert_eq!(
            s.raw(),
            before,
            "the item was written while .storage-write.lock was held"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        is_running(&running),
        "--once should wait for .storage-write.lock"
    );
    lock.release();
    let out = running.wait();
    out.expect_code(0).check_eq("requests", server.count(), 1);
    check_refreshed(&out, &s, &server, &doc);
    expect_no_file_and_no_lock_dirs(&out, &s.home);
}

#[test]
fn the_flock_of_a_keychain_login_is_config_dir_credentials_json_lock() {
    let login = Login::due();
    let doc = item_doc(&login);
    let s = Setup::with(&doc);
    let server = TokenServer::for_login(&login);
    let path = s.home.claude_dir().join(".credentials.json.lock");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .unwrap();
    // SAFETY: flock(2) on our own descriptor.
    assert_eq!(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) }, 0);
    let running = s.once(&server).spawn();
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        server.count(),
        0,
        "a request was sent while another process held {}",
        path.display()
    );
    assert!(is_running(&running), "--once should wait for the flock");
    drop(f);
    let out = running.wait();
    out.expect_code(0).check_eq("requests", server.count(), 1);
    check_refreshed(&out, &s, &server, &doc);
    out.check(
        path.is_file(),
        "the flock file is kept (never renamed or removed)",
    );
    expect_no_file_and_no_lock_dirs(&out, &s.home);
}

#[test]
fn a_locked_keychain_exits_75_and_says_to_unlock_it() {
    let login = Login::due();
    let s = Setup::with(&item_doc(&login));
    let server = TokenServer::for_login(&login);
    s.kc.lock();
    let before = s.kc.db_bytes();
    let out = s.once(&server).args(["--retry-budget", "3s"]).run();
    out.expect_code(75)
        .expect_stderr_contains("security unlock-keychain")
        .check_eq("requests", server.count(), 0)
        .check_eq("the keychain", s.kc.db_bytes(), before)
        .check(
            out.elapsed < Duration::from_secs(15),
            format!("a 3 s budget took {:?}", out.elapsed),
        )
        .check(
            s.kc.results().iter().filter(|&&r| r == 36).count() >= 2,
            "a locked keychain is retried",
        );
    // `status` says so too, and is not "logged out" (77) or "missing" (78).
    let out = s.cmd(&server, &["status"]).run();
    out.check(
        out.code != 77 && out.code != 78 && out.code != 0,
        "status of a locked keychain is a failure, neither logged out nor missing",
    )
    .expect_stderr_contains("security unlock-keychain");
}

#[test]
fn a_keychain_unlocked_within_the_budget_is_refreshed() {
    let login = Login::due();
    let doc = item_doc(&login);
    let s = Setup::with(&doc);
    let server = TokenServer::for_login(&login);
    s.kc.lock();
    let running = s.once(&server).args(["--retry-budget", "30s"]).spawn();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(server.count(), 0, "a request without reading the item");
    s.kc.unlock();
    let out = running.wait();
    out.expect_code(0).check_eq("requests", server.count(), 1);
    check_refreshed(&out, &s, &server, &doc);
}

#[test]
fn a_keychain_locked_while_the_request_is_in_flight_loses_nothing() {
    let login = Login::due();
    let doc = item_doc(&login);
    let s = Setup::with(&doc);
    let server = TokenServer::for_login(&login);
    server.set_delay(Duration::from_millis(800));
    let running = s.once(&server).args(["--retry-budget", "30s"]).spawn();
    await_requests(&server, 1);
    s.kc.lock();
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        is_running(&running),
        "--once keeps the grant and waits for the keychain"
    );
    s.kc.unlock();
    let out = running.wait();
    out.expect_code(0)
        .check_eq(
            "requests (the spent token is never sent again)",
            server.count(),
            1,
        )
        .check(
            s.kc.results().contains(&36),
            "the write never met the locked keychain: the test did not test anything",
        );
    check_refreshed(&out, &s, &server, &doc);
}
