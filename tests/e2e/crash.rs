//! Crash recovery, shown by crashing: the binary (built with the `test-seams` feature, which the
//! suite turns on) aborts at each step of the refresh path when `CLAUDE_TOKEND_TEST_CRASH_AT`
//! names it, leaving whatever a `kill -9` or a power cut there would leave. For every step the
//! file must hold a whole old or a whole new token pair with every other key intact, and the
//! next run must clean up and go on at once. Then many concurrent runs and a daemon on one
//! token: one request in all.

use std::time::{Duration, Instant};

use claude_tokend_e2e::*;

/// How long the run after a crash may take. Anything left that blocked it would show as a
/// wait of 15 s (a stale `.storage-write.lock`) or 60 s (a stale refresh lock, or the retry
/// budget): a prompt run proves the leftovers were recognised as orphans, not waited out.
const PROMPT: Duration = Duration::from_secs(10);

/// `abort()` ends the process with SIGABRT: 128 + 6.
const ABORTED: i32 = 134;

const OAUTH_LOCK: &str = ".oauth_refresh.lock";
const CONFIG_LOCK: &str = ".claude.lock";
const WRITE_LOCK: &str = ".storage-write.lock";

/// What a crash at one step leaves, and so what the next run must do.
struct Step {
    /// The value of `CLAUDE_TOKEND_TEST_CRASH_AT`.
    name: &'static str,
    /// The request reached the server before the crash: it has spent the old refresh token
    /// (single-use) and issued a new pair, whether or not the answer was saved.
    spent: bool,
    /// The file holds the new pair (the rename happened); otherwise the old one.
    renamed: bool,
    /// A temp file is left: `Some(false)` empty, `Some(true)` holding the new document.
    temp: Option<bool>,
    /// The lock directories still there (in the order of `claude_lock_dirs`).
    locks: &'static [&'static str],
}

/// Runs `--once` on a due token with the crash at `step`, checks what the crash left, then
/// that the next `--once` recovers at once and leaves nothing behind.
fn crash_then_recover(step: &Step) {
    let home = TempHome::new();
    let login = Login::due();
    let doc = login.doc();
    home.write_creds(&doc);
    let server = TokenServer::for_login(&login);
    let mut crash = Cmd::new(&home)
        .server(&server)
        .arg("--once")
        .env("CLAUDE_TOKEND_TEST_CRASH_AT", step.name);
    if step.name == "request-sent" {
        // The abort comes 400 ms after the request went out, the answer only after 2 s: the
        // server has the request (and has spent the token) but the answer never arrives.
        server.set_delay(Duration::from_secs(2));
        crash = crash.env("CLAUDE_TOKEND_TEST_CRASH_DELAY_MS", "400");
    }
    let out = crash.run();
    out.check_eq(
        format!(
            "exit code of a run crashing at `{}` (SIGABRT; if this fails, is the binary built \
             with the test-seams feature?)",
            step.name
        ),
        out.code,
        ABORTED,
    );
    server.set_delay(Duration::ZERO);

    // What the crash left.
    out.check_eq(
        "requests that reached the server before the crash",
        server.count(),
        usize::from(step.spent),
    );
    let after_crash = home.read_creds();
    let pair = which_pair(&after_crash, &login, &server.issued())
        .unwrap_or_else(|e| panic!("after a crash at `{}`: {e}\n{}", step.name, out.context()));
    out.check_eq(
        format!(
            "the token pair in the file after a crash at `{}`",
            step.name
        ),
        pair,
        if step.renamed {
            Pair::Issued(0)
        } else {
            Pair::Old
        },
    )
    .check_eq(
        "everything but the owned fields, after the crash",
        without_owned(&after_crash),
        without_owned(&doc),
    )
    .check_eq("mode after the crash", home.mode(), 0o600)
    .check_eq(
        "lock directories the crash left",
        lock_dirs_present(&home),
        step.locks.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
    );
    let temps = temp_files(&home);
    out.check_eq(
        format!("temp files the crash left: {temps:?}"),
        temps.len(),
        usize::from(step.temp.is_some()),
    );
    if step.temp == Some(true) {
        // Written and synced before the crash: the whole new document, never renamed.
        let in_temp = read_json(&temps[0]);
        out.check_eq(
            "the pair in the temp file",
            which_pair(&in_temp, &login, &server.issued()),
            Ok(Pair::Issued(0)),
        )
        .check_eq(
            "everything but the owned fields, in the temp file",
            without_owned(&in_temp),
            without_owned(&doc),
        );
    }
    out.check(
        !home.list_dir().iter().any(|n| n.ends_with(".bak")),
        "no .bak is made by a rename write",
    );

    // The next run: no lock, directory or flock, blocks it.
    let next = Cmd::new(&home)
        .server(&server)
        .arg("--once")
        .timeout(Duration::from_secs(75))
        .run();
    next.check(
        next.elapsed < PROMPT,
        format!(
            "the run after a crash at `{}` took {:?}: something the crash left blocked it",
            step.name, next.elapsed
        ),
    );
    // Checked last, so a wrong outcome is reported first.
    let left_by_next = leftovers(&home);
    let file = home.read_creds();
    next.check_eq(
        "everything but the owned fields, after the next run",
        without_owned(&file),
        without_owned(&doc),
    )
    .check_eq("mode after the next run", home.mode(), 0o600);
    let pair = which_pair(&file, &login, &server.issued()).unwrap_or_else(|e| panic!("{e}"));
    match (step.spent, step.renamed) {
        // The rename happened: the file holds the new pair, good for hours. Nothing to do but
        // clear the dead run's lock directories.
        (true, true) => {
            next.expect_code(0)
                .expect_silent()
                .check_eq("requests in all", server.count(), 1)
                .check_eq("the pair in the file", pair, Pair::Issued(0));
        }
        // Nothing was sent: the old refresh token is still good, and the next run refreshes
        // with it.
        (false, false) => {
            next.expect_code(0)
                .expect_silent()
                .check_eq("requests in all", server.count(), 1)
                .check_eq("the pair in the file", pair, Pair::Issued(0))
                .check_eq(
                    "the refresh token sent",
                    server.requests()[0].refresh_token(),
                    Some(login.refresh.as_str()),
                );
        }
        // The server spent the old refresh token, but the new pair never reached the file
        // (the answer was lost with the process, or sat in a temp file that was never
        // renamed: an orphan temp file is not trusted as the credentials). The file's token is
        // spent, so the server refuses it: a new login is needed, exit 77. That is the real
        // consequence of dying between the request and the rename; what matters is that the
        // file is still whole and the refusal is reported, not hidden or retried.
        (true, false) => {
            next.expect_code(77)
                .expect_stderr_contains("login")
                .expect_no_secret(&login.secrets())
                .check_eq("requests in all", server.count(), 2)
                .check_eq(
                    "the refresh token the next run sent",
                    server.requests()[1].refresh_token(),
                    Some(login.refresh.as_str()),
                )
                .check_eq("the pair in the file", pair, Pair::Old);
            // After a new login (new tokens in the file, which the server accepts; the
            // refused token itself is never sent again), the run after that succeeds: nothing
            // the crash left is in the way.
            let login = Login::due();
            let mut relogged = home.read_creds();
            for (key, value) in oauth(&login.doc()) {
                relogged["claudeAiOauth"][key.as_str()] = value.clone();
            }
            home.write_creds(&relogged);
            server.accept_refresh(&login.refresh);
            let again = Cmd::new(&home).server(&server).arg("--once").run();
            again
                .expect_code(0)
                .expect_silent()
                .check(
                    again.elapsed < PROMPT,
                    format!("took {:?} after a new login", again.elapsed),
                )
                .check_eq("requests in all", server.count(), 3)
                .check_eq(
                    "the pair in the file",
                    which_pair(&home.read_creds(), &login, &server.issued()),
                    Ok(Pair::Issued(1)),
                )
                .check_eq(
                    "everything but the owned fields",
                    without_owned(&home.read_creds()),
                    without_owned(&doc),
                )
                .check_eq(
                    "left behind after the run after a new login",
                    leftovers(&home),
                    Vec::<String>::new(),
                );
        }
        (false, true) => unreachable!("no rename without a request"),
    }
    // Whatever the next run had to do (a refresh, a refusal, or nothing at all because the
    // token is fresh), the dead run's lock directories and temp file are gone after it: Claude
    // Code would otherwise wait on those locks (7 s per attempt, until they are a minute old)
    // and on `.storage-write.lock` for its writes.
    next.check_eq(
        format!(
            "left behind after the run that followed a crash at `{}`",
            step.name
        ),
        left_by_next,
        Vec::<String>::new(),
    );
}

#[test]
fn crash_after_taking_the_lock() {
    // Only the flock is held, and the kernel releases it with the process.
    crash_then_recover(&Step {
        name: "locked",
        spent: false,
        renamed: false,
        temp: None,
        locks: &[],
    });
}

#[test]
fn crash_after_creating_the_temp_file() {
    crash_then_recover(&Step {
        name: "temp-created",
        spent: false,
        renamed: false,
        temp: Some(false),
        locks: &[OAUTH_LOCK, CONFIG_LOCK],
    });
}

#[test]
fn crash_while_the_request_is_in_flight() {
    crash_then_recover(&Step {
        name: "request-sent",
        spent: true,
        renamed: false,
        temp: Some(false),
        locks: &[OAUTH_LOCK, CONFIG_LOCK],
    });
}

#[test]
fn crash_after_the_response_arrived() {
    crash_then_recover(&Step {
        name: "response-received",
        spent: true,
        renamed: false,
        temp: Some(false),
        locks: &[OAUTH_LOCK, CONFIG_LOCK],
    });
}

#[test]
fn crash_after_writing_the_temp_file() {
    // Claude Code's storage-write lock is held for the re-read and the rename.
    crash_then_recover(&Step {
        name: "temp-written",
        spent: true,
        renamed: false,
        temp: Some(true),
        locks: &[OAUTH_LOCK, CONFIG_LOCK, WRITE_LOCK],
    });
}

#[test]
fn crash_right_after_the_rename() {
    crash_then_recover(&Step {
        name: "renamed",
        spent: true,
        renamed: true,
        temp: None,
        locks: &[OAUTH_LOCK, CONFIG_LOCK, WRITE_LOCK],
    });
}

#[test]
fn crash_before_releasing_the_locks() {
    // The write is done and the storage-write lock released; the refresh locks are still held.
    crash_then_recover(&Step {
        name: "before-unlock",
        spent: true,
        renamed: true,
        temp: None,
        locks: &[OAUTH_LOCK, CONFIG_LOCK],
    });
}

// ---------------------------------------------------------------------------------------------
// Concurrency at scale

/// 32 `--once` runs and a daemon, all started together on one due token against a slow
/// endpoint: one of them refreshes, every other one waits on the lock, re-reads and finds the
/// token fresh. One request in all (a second one would spend the rotated token's predecessor
/// again and be refused).
#[test]
fn thirty_two_once_runs_and_a_daemon_send_one_request() {
    let home = TempHome::new();
    // Due for the daemon's 10 s lead and for `--once`'s default 15 minutes alike.
    let login = Login::expiring_in(5);
    let doc = login.doc();
    home.write_creds(&doc);
    let server = TokenServer::for_login(&login);
    server.set_delay(Duration::from_millis(300));
    let daemon = Cmd::new(&home)
        .server(&server)
        .args(["--refresh-before", "10s"])
        .timeout(Duration::from_secs(120))
        .spawn();
    let runs: Vec<Running> = (0..32)
        .map(|_| Cmd::new(&home).server(&server).arg("--once").spawn())
        .collect();
    let outs: Vec<Out> = runs.into_iter().map(Running::wait).collect();
    for out in &outs {
        out.expect_code(0).expect_silent();
    }
    // Every `--once` found the token fresh, so the new pair is in the file. Give the daemon
    // time to see that write (and to send a second request, if it were going to) before
    // stopping it.
    let settle = Instant::now();
    while settle.elapsed() < Duration::from_millis(1500) {
        assert!(is_running(&daemon), "the daemon exited on its own");
        std::thread::sleep(Duration::from_millis(50));
    }
    send_signal(&daemon, libc::SIGTERM);
    let d = daemon.wait();
    d.expect_code(0)
        .check_eq(
            "requests sent by 32 --once runs and a daemon",
            server.count(),
            1,
        )
        .check_eq(
            "the refresh token sent",
            server.requests()[0].refresh_token(),
            Some(login.refresh.as_str()),
        );
    let file = home.read_creds();
    d.check_eq(
        "the pair in the file",
        which_pair(&file, &login, &server.issued()),
        Ok(Pair::Issued(0)),
    )
    .check_eq(
        "everything but the owned fields",
        without_owned(&file),
        without_owned(&doc),
    )
    .check_eq("mode", home.mode(), 0o600)
    .check_eq("left behind", leftovers(&home), Vec::<String>::new());
    let issued = server.last_issued();
    let mut secrets = login.secrets();
    secrets.push(issued.access.clone());
    secrets.extend(issued.refresh.clone());
    d.expect_no_secret(&secrets);
}

// ---------------------------------------------------------------------------------------------
// Killed while waiting for Claude Code

/// `kill -9` while the run holds `.oauth_refresh.lock` and waits for `~/.claude.lock`, which
/// a live Claude Code holds: the directory we made must not block the next run once Claude
/// Code is done.
#[test]
fn killed_while_waiting_for_claude_codes_lock_leaves_nothing_that_blocks() {
    let home = TempHome::new();
    let login = Login::due();
    let doc = login.doc();
    home.write_creds(&doc);
    let server = TokenServer::for_login(&login);
    let [oauth_lock, config_lock, _] = claude_lock_dirs(&home);
    // A live holder of `~/.claude.lock` only (made now, so it is far from stale).
    std::fs::create_dir(&config_lock).expect("mkdir ~/.claude.lock");
    let run = Cmd::new(&home).server(&server).arg("--once").spawn();
    let t = Instant::now();
    while !oauth_lock.exists() && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        oauth_lock.exists(),
        "the run never took .oauth_refresh.lock"
    );
    // Let it settle into the wait for `~/.claude.lock`.
    std::thread::sleep(Duration::from_millis(300));
    send_signal(&run, libc::SIGKILL);
    let out = run.wait();
    out.expect_code(137)
        .check_eq("requests sent", server.count(), 0)
        .check_eq(
            "the file",
            which_pair(&home.read_creds(), &login, &[]),
            Ok(Pair::Old),
        );
    // Claude Code finishes and lets go.
    std::fs::remove_dir(&config_lock).expect("rmdir ~/.claude.lock");
    // A short budget only so that a failure shows in 10 s, not 60: a run that is not blocked
    // needs a fraction of a second.
    let next = Cmd::new(&home)
        .server(&server)
        .args(["--once", "--retry-budget", "10s"])
        .run();
    next.check_eq(
        "exit code of the run after the kill (75 after the whole budget: it waited for the dead \
         run's .oauth_refresh.lock as if it were live)",
        next.code,
        0,
    )
    .check(
        next.elapsed < PROMPT,
        format!(
            "the run after the kill took {:?}: the dead run's .oauth_refresh.lock blocked it",
            next.elapsed
        ),
    )
    .expect_silent()
    .check_eq("requests sent", server.count(), 1)
    .check_eq(
        "the pair in the file",
        which_pair(&home.read_creds(), &login, &server.issued()),
        Ok(Pair::Issued(0)),
    )
    .check_eq("left behind", leftovers(&home), Vec::<String>::new());
}
