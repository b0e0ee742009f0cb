//! A login that goes away and comes back byte for byte the same (moved away and back, a backup
//! restored, a symlink loop fixed) is kept fresh again: "any outside change is re-read and the
//! schedule is re-armed" (CONTRACT.md "The daemon"). Found by a hostile review: the daemon
//! remembered the bytes it had read before the store went away, took the same bytes back for
//! "nothing new", and waited for the store forever while the token expired.

use std::fs;
use std::time::Duration;

use claude_tokend_e2e::*;

/// The daemon with a 10 s lead on a login due 5 s after the store comes back; the store is
/// taken away by `away` and put back by `back` (each keeping the bytes).
fn comes_back(away: impl Fn(&TempHome), back: impl Fn(&TempHome)) {
    let home = TempHome::new();
    let login = Login::expiring_in(20);
    home.write_creds(&login.doc());
    let server = TokenServer::for_login(&login);
    let d = Cmd::new(&home)
        .server(&server)
        .args(["--refresh-before", "10s"])
        .timeout(Duration::from_secs(90))
        .spawn();
    std::thread::sleep(Duration::from_millis(800));
    away(&home);
    std::thread::sleep(Duration::from_millis(1200));
    back(&home);
    let refreshed = wait_until(Duration::from_secs(30), || server.count() >= 1);
    let out = stop(d);
    out.check(refreshed, "the login that came back was refreshed when due")
        .check_eq("requests", server.count(), 1);
}

#[test]
fn a_login_moved_away_and_back_unchanged_is_kept_fresh() {
    comes_back(
        |home| fs::rename(home.creds_path(), home.path().join("aside.json")).unwrap(),
        |home| fs::rename(home.path().join("aside.json"), home.creds_path()).unwrap(),
    );
}

#[test]
fn a_login_unreadable_for_a_while_then_unchanged_is_kept_fresh() {
    // A symlink loop makes every read fail (ELOOP), for root too.
    comes_back(
        |home| {
            let path = home.creds_path();
            fs::rename(&path, home.path().join("aside.json")).unwrap();
            std::os::unix::fs::symlink(".credentials.json", &path).unwrap();
        },
        |home| {
            fs::rename(home.path().join("aside.json"), home.creds_path()).unwrap();
        },
    );
}

/// A FIFO where a credentials file belongs (a stalled filesystem behaves alike) never blocks:
/// `refresh` refuses it at once (78) and the daemon keeps another login fresh and stops on
/// SIGTERM. Found by the hostile review: the open blocked, SIGTERM was ignored.
#[test]
fn a_fifo_in_place_of_the_file_blocks_nothing() {
    let home = TempHome::new();
    let other = home.path().join("other");
    fs::create_dir(&other).unwrap();
    let fifo = other.join(".credentials.json");
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path; mkfifo has no other preconditions.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");

    let out = Cmd::new(&home)
        .args(["refresh", "--config-dir"])
        .arg(&other)
        .timeout(Duration::from_secs(10))
        .run();
    out.expect_code(78)
        .expect_stderr_contains("not a regular file")
        .check(
            out.elapsed < Duration::from_secs(5),
            format!("took {:?}", out.elapsed),
        );

    let login = Login::due();
    home.write_creds(&login.doc());
    let server = TokenServer::for_login(&login);
    let d = Cmd::new(&home)
        .server(&server)
        .arg("--config-dir")
        .arg(home.claude_dir())
        .arg("--config-dir")
        .arg(&other)
        .timeout(Duration::from_secs(60))
        .spawn();
    let refreshed = wait_until(Duration::from_secs(15), || server.count() >= 1);
    let out = stop(d);
    out.check(refreshed, "the other login was refreshed")
        .expect_code(0)
        .check(
            out.elapsed < Duration::from_secs(30),
            format!("the daemon ran {:?}", out.elapsed),
        );
}
