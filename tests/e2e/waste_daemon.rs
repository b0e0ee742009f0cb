//! "Never waste, never hammer" (CONTRACT.md), the daemon: no refresh storm after short grants
//! (the 60 s floor, SIGUSR1 included), a grant whose save fails kept and saved later, only the
//! login's own fields re-arming a refused or backed-off login, Retry-After capped at an hour,
//! and hostile lifetimes. Helpers are shared with `waste.rs`.

use std::time::Duration;

use claude_tokend_e2e::*;
use serde_json::json;

use crate::waste::*;

/// The daemon with the default 15-minute lead: `Login::due()` is due at once.
fn daemon(home: &TempHome, server: &TokenServer) -> Cmd {
    Cmd::new(home)
        .server(server)
        .timeout(Duration::from_secs(150))
}

/// Stops the daemon (it must exit 0) when it still runs, or collects it when it died, so a
/// failed check shows its log.
fn finish(d: Running) -> Out {
    if is_running(&d) { stop(d) } else { d.wait() }
}

/// Starts the daemon on a due login whose refreshes grant `expires_in` seconds; waits for its
/// first refresh to be saved, then watches `secs` more seconds: no second request.
fn no_storm_after_grants_of(expires_in: u64, secs: u64) {
    let home = TempHome::new();
    let login = Login::due();
    let doc = login.doc();
    home.write_creds(&doc);
    let server = server_granting(&login, expires_in);
    let d = daemon(&home, &server).spawn();
    let saved = wait_until(SOON, || saved_latest(&home, &server));
    std::thread::sleep(Duration::from_secs(secs));
    let out = finish(d);
    out.check(saved, "the first grant was not saved").check_eq(
        format!("requests with {expires_in}-second grants"),
        server.count(),
        1,
    );
    check_saved(&out, &home, &server, &doc);
}

#[test]
fn ten_minute_grants_under_a_15_minute_lead_cause_no_storm() {
    no_storm_after_grants_of(600, 8);
}

#[test]
fn five_second_grants_are_held_by_the_60_second_floor() {
    no_storm_after_grants_of(5, 10);
}

#[test]
fn sigusr1_right_after_a_refresh_waits_for_the_floor() {
    let home = TempHome::new();
    let login = Login::due();
    home.write_creds(&login.doc());
    let server = TokenServer::for_login(&login);
    let d = daemon(&home, &server).spawn();
    let saved = wait_until(SOON, || saved_latest(&home, &server));
    send_signal(&d, libc::SIGUSR1);
    std::thread::sleep(Duration::from_secs(5));
    let inside_floor = server.count();
    if inside_floor == 1 {
        wait_until(Duration::from_secs(75), || server.count() >= 2);
        wait_until(SOON, || saved_latest(&home, &server));
    }
    let out = finish(d);
    out.check(saved, "the first grant was not saved").check_eq(
        "requests 5 s after SIGUSR1 inside the floor",
        inside_floor,
        1,
    );
    let r = server.requests();
    out.check_eq("requests", r.len(), 2);
    let gap = r[1].received_ms - r[0].received_ms;
    out.check(
        gap >= 59_500,
        format!("the second request came {gap} ms after the first"),
    )
    .check_eq(
        "refresh tokens sent",
        sent_tokens(&server),
        vec![login.refresh, server.issued()[0].refresh.clone().unwrap()],
    );
}

#[test]
fn the_daemon_keeps_a_grant_whose_save_fails_and_saves_it_later() {
    let home = TempHome::new();
    let login = Login::due();
    let doc = login.doc();
    home.write_creds(&doc);
    let server = TokenServer::for_login(&login);
    let marker = home.path().join("rename-refused");
    std::fs::write(&marker, b"").unwrap();
    let d = daemon(&home, &server)
        .env(RENAME_ERRNO, EACCES)
        .env(RENAME_FAIL_WHILE, &marker)
        .spawn();
    await_requests(&server, 1);
    std::thread::sleep(Duration::from_secs(4));
    std::fs::remove_file(&marker).unwrap();
    let saved = wait_until(Duration::from_secs(40), || saved_latest(&home, &server));
    std::thread::sleep(Duration::from_secs(5));
    let out = finish(d);
    out.check(saved, "the grant was not saved once renames worked again")
        .check_eq(
            "refresh tokens sent",
            sent_tokens(&server),
            vec![login.refresh],
        );
    check_saved(&out, &home, &server, &doc);
}

#[test]
fn after_invalid_grant_only_a_change_of_the_login_re_arms() {
    let home = TempHome::new();
    let spent = Login::due();
    home.write_creds(&spent.doc());
    let server = TokenServer::start();
    let d = daemon(&home, &server).spawn();
    await_requests(&server, 1);
    std::thread::sleep(Duration::from_millis(500));
    for i in 0..3 {
        change_mcp_only(&home, i);
        std::thread::sleep(Duration::from_secs(1));
    }
    let after_mcp = sent_tokens(&server);
    let login = Login::due();
    server.accept_refresh(&login.refresh);
    let mut doc = home.read_creds();
    doc["claudeAiOauth"]["accessToken"] = json!(login.access);
    doc["claudeAiOauth"]["refreshToken"] = json!(login.refresh);
    doc["claudeAiOauth"]["expiresAt"] = json!(login.expires_at);
    replace_atomically(&home.creds_path(), &doc);
    let saved = wait_until(SOON, || saved_latest(&home, &server));
    let out = finish(d);
    out.check_eq(
        "refresh tokens sent after MCP-only changes",
        after_mcp,
        vec![spent.refresh.clone()],
    )
    .check(saved, "the new login was not refreshed and saved")
    .check_eq(
        "refresh tokens sent",
        sent_tokens(&server),
        vec![spent.refresh, login.refresh],
    );
}

#[test]
fn an_mcp_only_change_does_not_cut_a_retry_after_short() {
    let home = TempHome::new();
    let login = Login::due();
    home.write_creds(&login.doc());
    let server = TokenServer::for_login(&login);
    server.push(Reply::error(503).header("Retry-After", "30"));
    let d = daemon(&home, &server).spawn();
    await_requests(&server, 1);
    for i in 0..2 {
        std::thread::sleep(Duration::from_millis(500));
        change_mcp_only(&home, i);
    }
    std::thread::sleep(Duration::from_secs(5));
    let out = finish(d);
    out.check_eq("requests within the 30 s Retry-After", server.count(), 1);
}

/// The daemon facing a 429 with `Retry-After: value`: still running after 5 s, one request,
/// the cap logged, and a clean stop.
fn retry_after_is_capped(value: &str) {
    let home = TempHome::new();
    let login = Login::due();
    home.write_creds(&login.doc());
    let server = TokenServer::for_login(&login);
    server.always(Reply::error(429).header("Retry-After", value));
    let d = daemon(&home, &server).spawn();
    await_requests(&server, 1);
    std::thread::sleep(Duration::from_secs(5));
    let alive = is_running(&d);
    let out = finish(d);
    expect_no_panic(&out);
    out.check(alive, format!("Retry-After: {value} stopped the daemon"));
    out.check_eq(
        format!("requests (Retry-After: {value})"),
        server.count(),
        1,
    )
    .expect_stderr_contains("Retry-After")
    .expect_stderr_contains("capped");
}

#[test]
fn a_retry_after_past_any_deadline_is_capped_without_a_panic() {
    retry_after_is_capped("9223372036854775");
}

#[test]
fn a_retry_after_of_a_year_is_capped() {
    retry_after_is_capped("31536000");
}

#[test]
fn zero_second_grants_cause_no_storm() {
    let home = TempHome::new();
    let login = Login::due();
    home.write_creds(&login.doc());
    let server = server_granting(&login, 0);
    let out = Cmd::new(&home).server(&server).arg("--once").run();
    expect_no_panic(&out);
    out.expect_code(0).check_eq("requests", server.count(), 1);
    let d = daemon(&home, &server).spawn();
    std::thread::sleep(Duration::from_secs(5));
    let out = finish(d);
    expect_no_panic(&out);
    out.check(
        server.count() <= 2,
        format!("the daemon sent {} requests in 5 s", server.count() - 1),
    );
}

#[test]
fn invalid_client_is_not_retried_on_an_mcp_only_change() {
    let home = TempHome::new();
    let login = Login::due();
    home.write_creds(&login.doc());
    let server = TokenServer::for_login(&login);
    server.always(Reply::json(400, &json!({"error": "invalid_client"})));
    let d = daemon(&home, &server).spawn();
    await_requests(&server, 1);
    for i in 0..2 {
        std::thread::sleep(Duration::from_secs(1));
        change_mcp_only(&home, i);
    }
    std::thread::sleep(Duration::from_secs(3));
    let out = finish(d);
    out.check_eq("requests", server.count(), 1);
}
