//! Signals in one-shot commands (CONTRACT.md "Interrupted, slow or absent": signals): `--once`,
//! `refresh`, `token`, and `login` once its code exchange is sent. SIGINT, SIGTERM or SIGHUP
//! before a request stop at once; during one, the answer is awaited and saved, the locks and
//! the temp file removed, and the exit status is 128 + the signal (an exit, not a death by the
//! signal). A second SIGINT abandons the wait; a repeated SIGTERM or SIGHUP does not. SIGUSR1
//! and SIGUSR2 are ignored, and so is a signal ignored at start (`nohup`).
//!
//! The server holds its answer back, so the signal lands while the request is in flight.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use claude_tokend_e2e::*;
use libc::{SIGHUP, SIGINT, SIGTERM, SIGUSR1, SIGUSR2};

use crate::login::{CC_SCOPES, MANUAL_REDIRECT, authorize, start_login};
use crate::waste::{EACCES, RENAME_ERRNO, RENAME_FAIL_WHILE, config_lock, oauth_lock};

/// What an interrupted run says while it waits for the answer.
const WAITING: &str = "waiting for the refresh in flight, then stopping";

/// How long the server holds its answer back: the signal lands inside it.
const DELAY: Duration = Duration::from_millis(1500);

/// Generous bound for "the request reached the server" on a shared, slow machine.
const SOON: Duration = Duration::from_secs(10);

/// A due login, its file and a server that knows its refresh token.
fn setup() -> (TempHome, Login, TokenServer) {
    let home = TempHome::new();
    let login = Login::due();
    home.write_creds(&login.doc());
    let server = TokenServer::for_login(&login);
    (home, login, server)
}

fn name(sig: i32) -> &'static str {
    match sig {
        SIGINT => "SIGINT",
        SIGTERM => "SIGTERM",
        SIGHUP => "SIGHUP",
        SIGUSR1 => "SIGUSR1",
        _ => "another signal",
    }
}

/// The run exited (with a status), rather than being killed by a signal.
#[track_caller]
fn expect_exited(out: &Out, status: ExitStatus) {
    out.check_eq("killed by a signal (it must exit)", status.signal(), None);
}

/// No Claude Code lock directory, no temp file, nothing but the file and its flock sibling.
#[track_caller]
fn expect_nothing_left(out: &Out, home: &TempHome) {
    out.check_eq("left behind", leftovers(home), Vec::<String>::new());
}

/// Waits for the first request to reach the server (it then holds its answer back).
#[track_caller]
fn await_request(server: &TokenServer) {
    assert!(
        wait_until(SOON, || server.count() >= 1),
        "no request reached the server"
    );
}

/// Waits until `path` (a run's stderr) contains `needle`.
#[track_caller]
fn await_text(path: &Path, needle: &str) -> String {
    let mut text = String::new();
    let seen = wait_until(SOON, || {
        text = std::fs::read_to_string(path).unwrap_or_default();
        text.contains(needle)
    });
    assert!(seen, "stderr never said {needle:?}; it holds:\n{text}");
    text
}

/// `command` on a due token, `sig` while the request is in flight: the answer is saved, the
/// exit status is 128 + `sig`, one request, nothing left behind, and no token on stdout.
fn signal_in_flight(command: &[&str], sig: i32) {
    let (home, login, server) = setup();
    let before = home.read_creds();
    server.set_delay(DELAY);
    let run = Cmd::new(&home).server(&server).args(command).spawn();
    await_request(&server);
    send_signal(&run, sig);
    let (out, status) = run.wait_with_status();
    expect_exited(&out, status);
    out.expect_code(128 + sig)
        .expect_stderr_contains(WAITING)
        .check_eq("requests sent", server.count(), 1)
        .expect_latest_pair("the file", &home.read_creds(), &server, &before)
        .expect_no_secret(&login.secrets());
    let issued = server.last_issued();
    out.check(
        !out.stdout.contains(&issued.access),
        format!("{}: an interrupted run prints no token", name(sig)),
    );
    expect_nothing_left(&out, &home);
}

#[test]
fn once_sigint_in_flight_saves_the_answer_and_exits_130() {
    signal_in_flight(&["--once"], SIGINT);
}

#[test]
fn once_sigterm_in_flight_saves_the_answer_and_exits_143() {
    signal_in_flight(&["--once"], SIGTERM);
}

#[test]
fn once_sighup_in_flight_saves_the_answer_and_exits_129() {
    signal_in_flight(&["--once"], SIGHUP);
}

#[test]
fn refresh_sigint_in_flight_saves_the_answer_and_exits_130() {
    signal_in_flight(&["refresh"], SIGINT);
}

#[test]
fn refresh_sigterm_in_flight_saves_the_answer_and_exits_143() {
    signal_in_flight(&["refresh"], SIGTERM);
}

#[test]
fn refresh_sighup_in_flight_saves_the_answer_and_exits_129() {
    signal_in_flight(&["refresh"], SIGHUP);
}

#[test]
fn token_sigint_in_flight_saves_the_answer_prints_nothing_and_exits_130() {
    signal_in_flight(&["token"], SIGINT);
}

#[test]
fn token_sigterm_in_flight_saves_the_answer_prints_nothing_and_exits_143() {
    signal_in_flight(&["token"], SIGTERM);
}

#[test]
fn token_sighup_in_flight_saves_the_answer_prints_nothing_and_exits_129() {
    signal_in_flight(&["token"], SIGHUP);
}

/// Waiting for a live Claude Code lock (`<config dir>.lock`, the second one), nothing is at
/// stake: any of the three signals stops every one-shot command at once, sends nothing, and
/// removes the lock directory it had already taken (`.oauth_refresh.lock`) but not the one
/// Claude Code holds.
#[test]
fn a_signal_before_the_request_stops_at_once_and_removes_what_was_taken() {
    for command in ["--once", "refresh", "token"] {
        for sig in [SIGINT, SIGTERM, SIGHUP] {
            let (home, _login, server) = setup();
            let before = home.state();
            let held = LiveLock::hold(&config_lock(&home));
            let run = Cmd::new(&home).server(&server).arg(command).spawn();
            assert!(
                wait_until(SOON, || oauth_lock(&home).is_dir()),
                "{command} never took .oauth_refresh.lock"
            );
            let signalled = Instant::now();
            send_signal(&run, sig);
            let (out, status) = run.wait_with_status();
            let took = signalled.elapsed();
            expect_exited(&out, status);
            out.expect_code(128 + sig)
                .check(
                    took < Duration::from_secs(2),
                    format!("{command}, {}: took {took:?} to stop", name(sig)),
                )
                .check_eq("requests sent", server.count(), 0)
                .check_eq("stdout", out.stdout.as_str(), "")
                .check(
                    !oauth_lock(&home).exists(),
                    format!("{command}, {}: left .oauth_refresh.lock", name(sig)),
                )
                .check(
                    config_lock(&home).is_dir(),
                    "the lock Claude Code holds was removed",
                )
                .expect_untouched(&home.creds_path(), &before);
            out.check_eq("temp files", temp_files(&home), Vec::new());
            held.release();
        }
    }
}

/// A second SIGINT (a person pressing Ctrl-C twice) abandons the wait, says the login may be
/// lost, and still removes the locks and the temp file.
#[test]
fn a_second_sigint_abandons_the_wait_and_says_the_login_may_be_lost() {
    let (home, login, server) = setup();
    server.set_delay(Duration::from_secs(8));
    let stderr = home.path().join("stderr.txt");
    let run = Cmd::new(&home)
        .server(&server)
        .arg("--once")
        .stderr_to(&stderr)
        .spawn();
    await_request(&server);
    send_signal(&run, SIGINT);
    await_text(&stderr, WAITING);
    let again = Instant::now();
    send_signal(&run, SIGINT);
    let (out, status) = run.wait_with_status();
    let took = again.elapsed();
    let text = std::fs::read_to_string(&stderr).unwrap_or_default();
    expect_exited(&out, status);
    out.expect_code(130)
        .check(
            took < Duration::from_secs(2),
            format!("the second SIGINT took {took:?} to end the wait"),
        )
        .check(
            text.contains("may be lost"),
            format!("stderr should say the login may be lost:\n{text}"),
        )
        .check_eq("requests sent", server.count(), 1)
        .check_eq(
            "the file still holds",
            which_pair(&home.read_creds(), &login, &server.issued()),
            Ok(Pair::Old),
        );
    expect_nothing_left(&out, &home);
}

/// A repeated SIGTERM or SIGHUP (a service manager insisting) does not abandon the answer.
#[test]
fn a_repeated_sigterm_or_sighup_does_not_abandon_the_answer() {
    let (home, _login, server) = setup();
    let before = home.read_creds();
    server.set_delay(Duration::from_secs(2));
    let stderr = home.path().join("stderr.txt");
    let run = Cmd::new(&home)
        .server(&server)
        .arg("--once")
        .stderr_to(&stderr)
        .spawn();
    await_request(&server);
    send_signal(&run, SIGTERM);
    await_text(&stderr, WAITING);
    send_signal(&run, SIGTERM);
    send_signal(&run, SIGHUP);
    let (out, status) = run.wait_with_status();
    expect_exited(&out, status);
    out.expect_code(143)
        .check_eq("requests sent", server.count(), 1)
        .expect_latest_pair("the file", &home.read_creds(), &server, &before);
    expect_nothing_left(&out, &home);
}

/// SIGUSR1 and SIGUSR2 mean something to the daemon only; their default action would kill a
/// one-shot command mid-request.
#[test]
fn sigusr1_and_sigusr2_do_not_stop_once() {
    let (home, _login, server) = setup();
    let before = home.read_creds();
    server.set_delay(DELAY);
    let run = Cmd::new(&home).server(&server).arg("--once").spawn();
    await_request(&server);
    send_signal(&run, SIGUSR1);
    send_signal(&run, SIGUSR2);
    let (out, status) = run.wait_with_status();
    expect_exited(&out, status);
    out.expect_code(0)
        .expect_silent()
        .check_eq("requests sent", server.count(), 1)
        .expect_latest_pair("the file", &home.read_creds(), &server, &before);
    expect_nothing_left(&out, &home);
}

/// Started under `nohup` (SIGHUP ignored), a SIGHUP stays ignored: the run goes on as if
/// nothing came.
#[test]
fn a_sighup_ignored_at_start_stays_ignored() {
    let (home, _login, server) = setup();
    let before = home.read_creds();
    server.set_delay(DELAY);
    let run = Cmd::new(&home)
        .server(&server)
        .arg("--once")
        .ignoring_signal(SIGHUP)
        .spawn();
    await_request(&server);
    send_signal(&run, SIGHUP);
    let (out, status) = run.wait_with_status();
    expect_exited(&out, status);
    out.expect_code(0)
        .expect_silent()
        .check_eq("requests sent", server.count(), 1)
        .expect_latest_pair("the file", &home.read_creds(), &server, &before);
}

/// Stopping with the new tokens in hand but their save failing: the save is retried, and once
/// it works the run exits 128 + signal with the tokens saved.
#[test]
fn a_save_that_fails_while_stopping_is_retried_until_it_works() {
    let (home, _login, server) = setup();
    let before = home.read_creds();
    server.set_delay(DELAY);
    let marker = home.path().join("rename-refused");
    std::fs::write(&marker, b"").unwrap();
    let stderr = home.path().join("stderr.txt");
    let run = Cmd::new(&home)
        .server(&server)
        .args(["--once", "-v"])
        .env(RENAME_ERRNO, EACCES)
        .env(RENAME_FAIL_WHILE, &marker)
        .stderr_to(&stderr)
        .spawn();
    await_request(&server);
    send_signal(&run, SIGTERM);
    await_text(&stderr, "could not be saved");
    std::fs::remove_file(&marker).unwrap();
    let (out, status) = run.wait_with_status();
    expect_exited(&out, status);
    out.expect_code(143)
        .check_eq("requests sent", server.count(), 1)
        .expect_latest_pair("the file", &home.read_creds(), &server, &before);
    expect_nothing_left(&out, &home);
}

/// ...and when it never works, the run gives up (here at the end of a short retry budget),
/// exits 1 and says the login may be lost; the locks and the temp file are still removed.
#[test]
fn a_save_that_keeps_failing_while_stopping_exits_1_saying_the_login_may_be_lost() {
    let (home, login, server) = setup();
    server.set_delay(DELAY);
    let run = Cmd::new(&home)
        .server(&server)
        .args(["--once", "--retry-budget", "3s"])
        .env(RENAME_ERRNO, EACCES)
        .spawn();
    await_request(&server);
    send_signal(&run, SIGTERM);
    let (out, status) = run.wait_with_status();
    expect_exited(&out, status);
    out.expect_code(1)
        .expect_stderr_contains("may be lost")
        .check_eq("requests sent", server.count(), 1)
        .check_eq(
            "the file still holds",
            which_pair(&home.read_creds(), &login, &server.issued()),
            Ok(Pair::Old),
        );
    expect_nothing_left(&out, &home);
}

// ---------------------------------------------------------------------------------------------
// login, once the code exchange is sent

/// A login whose code was pasted, its exchange answered after `exchange_delay` and its profile
/// lookup after `profile_delay`; `sig` lands once `sent` says so.
fn interrupted_login(
    exchange_delay: Duration,
    profile_delay: Duration,
    sent: impl Fn(&TokenServer) -> bool,
    sig: i32,
) -> (TempHome, TokenServer, Out, Duration) {
    let home = TempHome::new();
    let server = TokenServer::start();
    server.set_delay(exchange_delay);
    server.set_profile(
        Reply::profile("ada@example.test", "claude_max", "default_claude_max_20x")
            .delay(profile_delay),
    );
    let mut run = start_login(&home, &server, &[]);
    let (code, state) = authorize(&mut run, &server, CC_SCOPES, MANUAL_REDIRECT);
    run.paste(&format!("{code}#{state}"));
    assert!(wait_until(SOON, || sent(&server)), "the request never came");
    let signalled = Instant::now();
    // SAFETY: kill(2) on our own, not yet reaped, child.
    assert_eq!(unsafe { libc::kill(run.id() as i32, sig) }, 0);
    let out = run.finish();
    (home, server, out, signalled.elapsed())
}

/// A signal during the profile lookup that follows the exchange: the lookup is dropped, the new
/// login saved without the plan (as after a failed lookup), and the exit is 128 + signal.
#[test]
fn login_interrupted_during_the_profile_lookup_still_saves_the_login() {
    let (home, server, out, took) = interrupted_login(
        Duration::ZERO,
        Duration::from_secs(8),
        |s| !s.profile_requests().is_empty(),
        SIGTERM,
    );
    let issued = server.last_issued();
    let doc = home.read_creds();
    let o = oauth(&doc);
    out.expect_code(143)
        .check(
            took < Duration::from_secs(4),
            format!("took {took:?} to stop (the lookup is not waited for)"),
        )
        .check_eq(
            "access token saved",
            o.get("accessToken").and_then(|v| v.as_str()),
            Some(issued.access.as_str()),
        )
        .check_eq(
            "refresh token saved",
            o.get("refreshToken").and_then(|v| v.as_str()),
            issued.refresh.as_deref(),
        )
        .check(
            o.get("subscriptionType").is_none() && o.get("rateLimitTier").is_none(),
            "no plan is saved without the profile",
        )
        .check_eq("exchanges", server.count(), 1);
    expect_nothing_left(&out, &home);
}

/// A signal while the code exchange is in flight: its answer is awaited and saved.
#[test]
fn login_interrupted_during_the_exchange_waits_for_it_and_saves_the_login() {
    let (home, server, out, _) =
        interrupted_login(DELAY, Duration::ZERO, |s| s.count() >= 1, SIGINT);
    let issued = server.last_issued();
    let doc = home.read_creds();
    out.expect_code(130)
        .expect_stderr_contains("waiting for the code exchange in flight, then stopping")
        .check_eq(
            "access token saved",
            oauth(&doc).get("accessToken").and_then(|v| v.as_str()),
            Some(issued.access.as_str()),
        )
        .check_eq("exchanges", server.count(), 1);
    expect_nothing_left(&out, &home);
}

/// SIGHUP usually means the terminal hung up: from then on every write to stderr fails (as it
/// does here, with stderr on /dev/full). No message or log line may then end the run before
/// the answer in flight is saved.
#[test]
fn a_failing_stderr_does_not_lose_the_answer_in_flight() {
    for command in ["--once", "token", "refresh"] {
        let (home, _login, server) = setup();
        let before = home.read_creds();
        server.set_delay(DELAY);
        let run = Cmd::new(&home)
            .server(&server)
            .arg(command)
            .stderr_to(Path::new("/dev/full"))
            .spawn();
        await_request(&server);
        send_signal(&run, SIGHUP);
        let (out, status) = run.wait_with_status();
        expect_exited(&out, status);
        out.check_eq(format!("{command}: exit code"), out.code, 129)
            .check_eq("requests sent", server.count(), 1)
            .expect_latest_pair("the file", &home.read_creds(), &server, &before);
        expect_nothing_left(&out, &home);
    }
}
