//! `clock`: one `HEAD /` to the token endpoint's host (no body, no redirect followed, the
//! configured User-Agent) and its `Date` header; ok within 60 s, a warning beyond (ahead or
//! behind) or when the probe fails; `--offline` sends nothing and prints no clock line.

use std::time::{Duration, SystemTime};

use claude_tokend_e2e::*;

use super::support::*;

fn run(home: &TempHome, server: &TokenServer, args: &[&str]) -> Report {
    let mut argv = vec!["--json"];
    argv.extend(args);
    Report::run(doctor(home, &argv).server(server))
}

fn dated(t: SystemTime) -> Reply {
    Reply::raw(200, "").header("Date", &http_date(t))
}

#[test]
fn one_head_request_and_a_date_within_a_minute_is_ok() {
    let home = TempHome::new();
    home.write_creds(&Login::fresh().doc());
    let server = TokenServer::start();
    server.push(dated(SystemTime::now()));
    let r = run(&home, &server, &[]);
    r.out.expect_code(0);
    let host = server.addr().to_string();
    r.expect("clock", "ok", &format!("of {host}'s clock"));
    let sent = server.requests();
    r.out.check_eq("requests", sent.len(), 1);
    let probe = &sent[0];
    r.out.check_eq("method", probe.method.as_str(), "HEAD");
    r.out.check_eq("path", probe.path.as_str(), "/");
    r.out.check_eq("body", probe.raw_body.as_str(), "");
    r.out.check_eq(
        "User-Agent",
        probe.header("user-agent"),
        Some(default_user_agent().as_str()),
    );
    r.out
        .check_eq("no Authorization", probe.header("authorization"), None);
    // The configured User-Agent is the one sent.
    server.push(dated(SystemTime::now()));
    run(&home, &server, &["--user-agent", "probe-test/1"]);
    check_eq(
        "User-Agent",
        server.requests()[1].header("user-agent"),
        Some("probe-test/1"),
    );
    check_eq(
        "the clock check is last",
        r.names().last().map(String::as_str),
        Some("clock"),
    );
}

#[test]
fn a_clock_minutes_off_is_a_warning_either_way() {
    let home = TempHome::new();
    home.write_creds(&Login::fresh().doc());
    let server = TokenServer::start();
    // The server is 5 minutes behind us: our clock is ahead.
    server.push(dated(SystemTime::now() - Duration::from_secs(300)));
    let r = run(&home, &server, &[]);
    r.out.expect_code(0);
    r.expect("clock", "warn", "ahead of");
    r.out.check(
        r.fix("clock").contains("timedatectl set-ntp true"),
        "it says how to fix it",
    );
    server.push(dated(SystemTime::now() + Duration::from_secs(3600)));
    run(&home, &server, &[]).expect("clock", "warn", "behind");
}

#[test]
fn a_failed_probe_is_a_warning_a_redirect_is_not_followed_and_offline_sends_nothing() {
    let home = TempHome::new();
    home.write_creds(&Login::fresh().doc());
    let server = TokenServer::start();
    // An answer without a Date header.
    server.push(Reply::raw(404, ""));
    run(&home, &server, &[]).expect("clock", "warn", "without a Date header");
    // A redirect is an answer like any other: its Date is read, its Location never visited.
    let mut redirect = dated(SystemTime::now());
    redirect.status = 302;
    server.push(redirect.header("Location", &format!("{}/elsewhere", server.base())));
    run(&home, &server, &[]).expect("clock", "ok", "");
    check_eq(
        "requests so far (the redirect not followed)",
        server.count(),
        2,
    );
    // Nothing listening: a warning naming the host, quickly.
    let gone = TokenServer::start();
    let url = gone.url();
    drop(gone);
    let out = doctor(&home, &["--json"])
        .env("CLAUDE_TOKEND_TOKEN_URL", &url)
        .run();
    let r = Report::run(doctor(&home, &["--json"]).env("CLAUDE_TOKEND_TOKEN_URL", &url));
    r.expect("clock", "warn", "could not compare");
    out.check(
        out.elapsed < Duration::from_secs(5),
        "a refused connection is answered at once",
    );
    // --offline: no clock line and no request at all.
    let before = server.count();
    let r = run(&home, &server, &["--offline"]);
    r.out.check(
        !r.names().contains(&"clock".to_owned()),
        "no clock line offline",
    );
    check_eq("requests sent offline", server.count(), before);
}
