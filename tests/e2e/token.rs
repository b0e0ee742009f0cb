//! `claude-tokend token`: a valid access token on stdout for scripts, refreshed first (same
//! sequence, same locks) when due; silent on stderr when it succeeds; the one place a whole
//! token is printed, and only on stdout.

use std::time::Duration;

use claude_tokend_e2e::*;
use serde_json::{Value, json};

fn setup(login: &Login) -> (TempHome, TokenServer) {
    let home = TempHome::new();
    home.write_creds(&login.doc());
    (home, TokenServer::for_login(login))
}

#[test]
fn a_fresh_token_is_printed_as_it_is_and_nothing_is_sent() {
    let login = Login::fresh();
    let (home, server) = setup(&login);
    let before = home.state();
    let out = Cmd::new(&home).server(&server).arg("token").run();
    out.expect_code(0)
        .check_eq(
            "stdout",
            out.stdout.as_str(),
            &format!("{}\n", login.access),
        )
        .check_eq("stderr", out.stderr.as_str(), "")
        .check_eq("requests sent", server.count(), 0)
        .expect_untouched(&home.creds_path(), &before);
}

#[test]
fn json_gives_the_token_and_its_expiry() {
    let login = Login::fresh();
    let (home, server) = setup(&login);
    let out = Cmd::new(&home)
        .server(&server)
        .args(["token", "--json"])
        .run();
    out.expect_code(0);
    let got: Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| {
        panic!("stdout is not JSON ({e})\n{}", out.context());
    });
    out.check_eq(
        "the JSON",
        got,
        json!({"accessToken": login.access, "expiresAt": login.expires_at}),
    );
    out.check(out.stdout.ends_with('\n'), "one line, newline-terminated");
}

#[test]
fn a_due_token_is_refreshed_first_and_the_new_one_printed() {
    let login = Login::due();
    let (home, server) = setup(&login);
    let out = Cmd::new(&home).server(&server).arg("token").run();
    let issued = server.last_issued();
    out.expect_code(0)
        .check_eq("requests sent", server.count(), 1)
        .check_eq(
            "stdout",
            out.stdout.as_str(),
            &format!("{}\n", issued.access),
        )
        .check_eq("stderr: silent on success", out.stderr.as_str(), "")
        .check_eq(
            "the new token is saved too",
            oauth(&home.read_creds()).get("accessToken"),
            Some(&json!(issued.access)),
        )
        // The old tokens and the new refresh token are never printed.
        .expect_no_secret(&login.secrets());
    if let Some(rt) = issued.refresh {
        out.expect_no_secret(&[rt]);
    }
}

#[test]
fn eight_token_runs_beside_once_runs_send_one_request_and_print_the_same_new_token() {
    let login = Login::due();
    let (home, server) = setup(&login);
    server.set_delay(Duration::from_millis(300));
    let tokens: Vec<Running> = (0..8)
        .map(|_| Cmd::new(&home).server(&server).arg("token").spawn())
        .collect();
    let onces: Vec<Running> = (0..2)
        .map(|_| Cmd::new(&home).server(&server).arg("--once").spawn())
        .collect();
    let token_outs: Vec<Out> = tokens.into_iter().map(Running::wait).collect();
    for out in onces.into_iter().map(Running::wait) {
        out.expect_code(0).expect_silent();
    }
    let issued = server.last_issued();
    for out in &token_outs {
        out.expect_code(0)
            .check_eq(
                "stdout",
                out.stdout.as_str(),
                &format!("{}\n", issued.access),
            )
            .check_eq("stderr", out.stderr.as_str(), "");
    }
    token_outs[0].check_eq("requests sent by 10 concurrent runs", server.count(), 1);
}

#[test]
fn a_failing_refresh_still_hands_out_a_token_with_time_left_and_says_so() {
    // Due (inside the 15-minute lead) but valid for 10 more minutes.
    let login = Login::expiring_in(600);
    let (home, server) = setup(&login);
    server.always(Reply::error(503));
    let out = Cmd::new(&home)
        .server(&server)
        .args(["token", "--retry-budget", "1s"])
        .run();
    out.expect_code(0)
        .check_eq(
            "stdout",
            out.stdout.as_str(),
            &format!("{}\n", login.access),
        )
        .expect_stderr_contains("warning")
        .check(server.count() >= 1, "a refresh was tried")
        .check(
            !out.stderr.contains(&login.access),
            "the token is printed on stdout only",
        );
}

#[test]
fn a_failing_refresh_of_a_token_about_to_expire_exits_75_and_prints_nothing() {
    let login = Login::expiring_in(30);
    let (home, server) = setup(&login);
    server.always(Reply::error(503));
    let out = Cmd::new(&home)
        .server(&server)
        .args(["token", "--retry-budget", "1s"])
        .run();
    out.expect_code(75)
        .check_eq("stdout", out.stdout.as_str(), "")
        .expect_no_secret(&login.secrets());
}

#[test]
fn a_refused_grant_exits_77_and_prints_no_token() {
    let login = Login::due();
    let (home, server) = setup(&login);
    server.always(Reply::invalid_grant());
    let out = Cmd::new(&home).server(&server).arg("token").run();
    out.expect_code(77)
        .check_eq("stdout", out.stdout.as_str(), "")
        .expect_stderr_contains("login")
        .expect_no_secret(&login.secrets());
}

#[test]
fn no_file_is_78_and_a_blank_login_is_77() {
    let home = TempHome::new();
    let server = TokenServer::start();
    Cmd::new(&home)
        .server(&server)
        .arg("token")
        .run()
        .expect_code(78)
        .check_eq("requests sent", server.count(), 0);
    let mut doc = Login::fresh().doc();
    doc["claudeAiOauth"]["accessToken"] = json!("");
    doc["claudeAiOauth"]["refreshToken"] = json!("");
    doc["claudeAiOauth"]["expiresAt"] = json!(0);
    home.write_creds(&doc);
    let out = Cmd::new(&home).server(&server).arg("token").run();
    out.expect_code(77)
        .check_eq("stdout", out.stdout.as_str(), "")
        .check_eq("requests sent", server.count(), 0);
}

/// A grant of `lifetime` seconds obtained by `refresh` just now, so the 60 s floor holds it.
fn refreshed_with_lifetime(lifetime: u64) -> (TempHome, TokenServer) {
    let login = Login::due();
    let (home, server) = setup(&login);
    server.set_policy(GrantPolicy {
        expires_in: Some(lifetime),
        ..GrantPolicy::default()
    });
    Cmd::new(&home)
        .server(&server)
        .arg("refresh")
        .run()
        .expect_code(0);
    (home, server)
}

/// A token with under a minute to live, held back from a refresh by the floor, is not handed
/// out: 75, saying when to try again.
#[test]
fn a_token_with_under_a_minute_left_inside_the_floor_is_not_printed() {
    let (home, server) = refreshed_with_lifetime(30);
    let out = Cmd::new(&home).server(&server).arg("token").run();
    out.expect_code(75)
        .check_eq("stdout", out.stdout.as_str(), "")
        .expect_stderr_contains("try again")
        .check_eq("requests sent (only the refresh)", server.count(), 1);
}

/// Under a minute left is reason enough to refresh, even when the lead says "not yet" (a lead
/// shorter than a minute): the new token is printed.
#[test]
fn a_token_with_under_a_minute_left_is_refreshed_first_even_with_a_short_lead() {
    let login = Login::expiring_in(45);
    let (home, server) = setup(&login);
    let out = Cmd::new(&home)
        .server(&server)
        .args(["token", "--refresh-before", "20s"])
        .run();
    let issued = server.last_issued();
    out.expect_code(0)
        .check_eq(
            "stdout",
            out.stdout.as_str(),
            &format!("{}\n", issued.access),
        )
        .check_eq("requests sent", server.count(), 1);
}

/// `--once` exits 0 only with a valid token stored: an expired one the floor keeps from being
/// refreshed is 75, saying when to try again, and nothing is sent.
#[test]
fn once_with_an_expired_token_inside_the_floor_exits_75_saying_when_to_try_again() {
    let (home, server) = refreshed_with_lifetime(1);
    let expires_at = oauth(&home.read_creds())["expiresAt"].as_i64().unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || now_ms() > expires_at + 50),
        "the 1 s grant should have expired"
    );
    let out = Cmd::new(&home).server(&server).arg("--once").run();
    out.expect_code(75)
        .expect_stderr_contains("try again")
        .check_eq("requests sent (only the refresh)", server.count(), 1);
}

/// A Retry-After longer than the retry budget ends the attempt at once; like any transient
/// failure, a stored token with more than a minute left is still handed out, with a warning.
#[test]
fn a_retry_after_past_the_budget_still_hands_out_a_token_with_time_left() {
    let login = Login::expiring_in(600);
    let (home, server) = setup(&login);
    server.always(Reply::error(429).header("Retry-After", "3600"));
    let out = Cmd::new(&home).server(&server).arg("token").run();
    out.expect_code(0)
        .check_eq(
            "stdout",
            out.stdout.as_str(),
            &format!("{}\n", login.access),
        )
        .expect_stderr_contains("warning")
        .check_eq("requests sent", server.count(), 1)
        .check(
            out.elapsed < Duration::from_secs(10),
            format!(
                "took {:?}: the Retry-After must end it at once",
                out.elapsed
            ),
        );
}
