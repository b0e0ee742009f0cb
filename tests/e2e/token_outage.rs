//! `claude-tokend token` during an outage, as status bars run it (`timeout 2 claude-tokend
//! token`, every second or so): with a stored token that still lasts more than a minute, one
//! request and no retry, the stored token printed at once with a warning; and a pause recorded
//! in the program's lock file (until the server's Retry-After, or a short standard pause), so
//! the next runs send nothing while it holds for that refresh token. A token that does not
//! last, or another refresh token (a new login), is not held back by it.

use std::fs;
use std::time::Duration;

use claude_tokend_e2e::*;

/// What a status bar allows a run; a run that retries or sleeps by mistake is killed here
/// rather than after the whole retry budget.
const STATUS_BAR: Duration = Duration::from_secs(10);

/// Due by the 15-minute lead, but valid for 10 more minutes: worth printing if refreshing fails.
fn lasting_but_due() -> Login {
    Login::expiring_in(600)
}

fn setup(login: &Login) -> (TempHome, TokenServer) {
    let home = TempHome::new();
    home.write_creds(&login.doc());
    (home, TokenServer::for_login(login))
}

fn token(home: &TempHome, server: &TokenServer) -> Out {
    Cmd::new(home)
        .server(server)
        .arg("token")
        .timeout(STATUS_BAR)
        .run()
}

/// The stored token printed, exit 0, a warning naming `needle` on stderr and no whole token.
#[track_caller]
fn printed_stored(out: &Out, login: &Login, needle: &str) {
    out.expect_code(0)
        .check_eq(
            "stdout: the stored token",
            out.stdout.as_str(),
            &format!("{}\n", login.access),
        )
        .expect_stderr_contains("warning")
        .expect_stderr_contains(needle)
        .check(
            !out.stderr.contains(&login.access) && !out.stderr.contains(&login.refresh),
            "no whole token on stderr",
        );
}

#[test]
fn a_500_with_a_token_that_lasts_sends_one_request_and_prints_the_stored_token_at_once() {
    let login = lasting_but_due();
    let (home, server) = setup(&login);
    server.always(Reply::error(500));
    let out = token(&home, &server);
    printed_stored(&out, &login, "500");
    out.check_eq("requests sent", server.count(), 1).check(
        out.elapsed < Duration::from_millis(1500),
        format!(
            "took {:?}: one attempt, no backoff sleep (a status bar gives 2 s)",
            out.elapsed
        ),
    );
    // The next run, right after: the pause recorded by the first holds; nothing is sent.
    let again = token(&home, &server);
    printed_stored(&again, &login, "paused");
    again.check_eq("requests sent after the second run", server.count(), 1);
    // The store was never touched.
    check_eq(
        "the stored access token",
        oauth(&home.read_creds())["accessToken"].as_str(),
        Some(login.access.as_str()),
    );
}

#[test]
fn a_retry_after_of_3s_is_kept_by_every_run_until_it_ends() {
    let login = lasting_but_due();
    let (home, server) = setup(&login);
    server.always(Reply::error(429).header("Retry-After", "3"));
    let first = token(&home, &server);
    printed_stored(&first, &login, "429");
    first.check_eq("requests sent by the first run", server.count(), 1);
    let asked_at = server.requests()[0].received_ms;
    // Runs inside the 3 s the server asked for send nothing (`timeout 1 claude-tokend token`
    // once a second sent one request each before).
    let mut runs = 1;
    while now_ms() < asked_at + 2_500 {
        let out = token(&home, &server);
        printed_stored(&out, &login, "paused");
        out.check_eq("requests sent inside the 3 s", server.count(), 1);
        runs += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    check_eq("several runs happened inside the 3 s", runs > 3, true);
    // Once the 3 s are over, one more run sends one more request (and is told to wait again).
    let sent_again = wait_until(Duration::from_secs(6), || {
        let out = token(&home, &server);
        out.expect_code(0);
        server.count() > 1
    });
    let requests = server.requests();
    check_eq("a request once the pause ended", sent_again, true);
    check_eq("requests sent in all", requests.len(), 2);
    check_eq(
        "the second request came after the 3 s",
        requests[1].received_ms >= asked_at + 3_000,
        true,
    );
}

#[test]
fn a_token_that_does_not_last_still_goes_through_the_usual_retries_despite_a_pause() {
    let login = lasting_but_due();
    let (home, server) = setup(&login);
    server.always(Reply::error(500));
    // A run with a lasting token records the pause for this refresh token...
    printed_stored(&token(&home, &server), &login, "500");
    check_eq("requests sent by the first run", server.count(), 1);
    // ...which does not hold back a run whose stored token has expired: the usual sequence,
    // retries with backoff within the budget, then 75 and no token.
    let expired = Login {
        expires_at: now_ms() - 3_600_000,
        ..login.clone()
    };
    home.write_creds(&expired.doc());
    let out = Cmd::new(&home)
        .server(&server)
        .args(["token", "--retry-budget", "3s"])
        .timeout(STATUS_BAR)
        .run();
    out.expect_code(75)
        .check_eq("stdout", out.stdout.as_str(), "")
        .check(
            server.count() >= 3,
            format!(
                "retried within the budget: {} requests in all",
                server.count()
            ),
        );
}

#[test]
fn a_new_login_is_not_held_back_by_the_pause_of_the_old_one() {
    let login = lasting_but_due();
    let (home, server) = setup(&login);
    server.push(Reply::error(503));
    printed_stored(&token(&home, &server), &login, "503");
    check_eq("requests sent by the first run", server.count(), 1);
    // A new login (another refresh token), also due: the old token's pause says nothing about
    // it, so it is refreshed at once and the new token printed.
    let new = lasting_but_due();
    server.accept_refresh(&new.refresh);
    home.write_creds(&new.doc());
    let out = token(&home, &server);
    let issued = server.last_issued();
    out.expect_code(0)
        .check_eq(
            "stdout: the new login's fresh token",
            out.stdout.as_str(),
            &format!("{}\n", issued.access),
        )
        .check_eq("stderr: silent on success", out.stderr.as_str(), "")
        .check_eq("requests sent in all", server.count(), 2);
    check_eq(
        "the refresh token sent",
        server.requests()[1].refresh_token(),
        Some(new.refresh.as_str()),
    );
}

/// `--once` honours the pause too while the stored token is valid: a valid token is stored and
/// the server asked to wait, so it sends nothing and exits 0 silently (cron mails any output).
#[test]
fn once_sends_nothing_while_a_pause_holds_and_a_valid_token_is_stored() {
    let login = lasting_but_due();
    let (home, server) = setup(&login);
    server.always(Reply::error(429).header("Retry-After", "60"));
    printed_stored(&token(&home, &server), &login, "429");
    check_eq("requests sent by token", server.count(), 1);
    let out = Cmd::new(&home)
        .server(&server)
        .arg("--once")
        .timeout(STATUS_BAR)
        .run();
    out.expect_code(0).expect_silent();
    out.check_eq("requests sent in all", server.count(), 1);
    // The pause is a line of the program's own lock file, naming the refresh token by its
    // fingerprint only.
    let lock = fs::read_to_string(home.claude_dir().join(".credentials.json.lock"))
        .expect("the lock file");
    let line = lock
        .lines()
        .find(|l| l.starts_with("pause "))
        .unwrap_or_else(|| panic!("no pause line in the lock file:\n{lock}"));
    // pause <until, wall ms> <until, boot ms> <fingerprint> <why>
    let fields: Vec<&str> = line.splitn(5, ' ').collect();
    check_eq(
        "the pause's refresh token",
        fields.get(3).copied(),
        Some(token_fingerprint(&login.refresh).as_str()),
    );
    let until: i64 = fields[1].parse().expect("the pause's end, epoch ms");
    let asked_at = server.requests()[0].received_ms;
    check_eq(
        "the pause lasts the server's 60 s",
        (asked_at + 59_000..=now_ms() + 60_000).contains(&until),
        true,
    );
    check_eq(
        "no whole token in the lock file",
        lock.contains(&login.refresh),
        false,
    );
}

/// Eight status bars at once: the first run to hold the lock sends, and records the pause
/// before it lets go; the others, waiting for the lock, find it there. One request in all,
/// and every run prints the stored token.
#[test]
fn eight_token_runs_at_once_during_an_outage_send_one_request() {
    let login = lasting_but_due();
    let (home, server) = setup(&login);
    server.always(Reply::error(503).delay(Duration::from_millis(300)));
    let runs: Vec<Running> = (0..8)
        .map(|_| {
            Cmd::new(&home)
                .server(&server)
                .arg("token")
                .timeout(STATUS_BAR)
                .spawn()
        })
        .collect();
    for out in runs.into_iter().map(Running::wait) {
        out.expect_code(0).check_eq(
            "stdout: the stored token",
            out.stdout.as_str(),
            &format!("{}\n", login.access),
        );
    }
    check_eq("requests sent by 8 concurrent runs", server.count(), 1);
}

/// The pause is for `token` and `--once`: `refresh` is asked for now, and the daemon keeps its
/// own schedule (and backoff). (A guard: before the pause existed, nothing held them back
/// either.)
#[test]
fn refresh_and_the_daemon_send_despite_a_pause() {
    let login = lasting_but_due();
    let (home, server) = setup(&login);
    server.push(Reply::error(503));
    printed_stored(&token(&home, &server), &login, "503");
    Cmd::new(&home)
        .server(&server)
        .arg("refresh")
        .timeout(STATUS_BAR)
        .run()
        .expect_code(0)
        .check_eq("requests sent after refresh", server.count(), 2);
    // A new login (not a grant of ours, so the 60 s floor does not hold it), paused in turn by
    // a failed run of `token`.
    let new = lasting_but_due();
    server.accept_refresh(&new.refresh);
    home.write_creds(&new.doc());
    server.push(Reply::error(503));
    printed_stored(&token(&home, &server), &new, "503");
    printed_stored(&token(&home, &server), &new, "paused");
    check_eq("requests sent before the daemon", server.count(), 3);
    let d = Cmd::new(&home)
        .server(&server)
        .timeout(Duration::from_secs(60))
        .spawn();
    let refreshed = wait_until(Duration::from_secs(15), || server.count() == 4);
    let out = stop(d);
    out.check(refreshed, "the daemon refreshed the due login at once")
        .check_eq(
            "the refresh token the daemon sent",
            server.requests()[3].refresh_token(),
            Some(new.refresh.as_str()),
        );
}
