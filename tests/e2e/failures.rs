//! What goes wrong: transient failures and their retries, permanent refusals, redirects, and
//! credentials files that cannot be used. A failure never changes the file.

use std::time::Duration;

use claude_tokend_e2e::*;
use serde_json::{Value, json};

/// A HOME with a typical document holding a due login, and a server (which accepts the login
/// only when `known`).
fn setup(known: bool) -> (TempHome, Login, TokenServer) {
    let home = TempHome::new();
    let login = Login::due();
    home.write_creds(&login.doc());
    let server = if known {
        TokenServer::for_login(&login)
    } else {
        TokenServer::start()
    };
    (home, login, server)
}

#[track_caller]
fn check_refreshed(out: &Out, home: &TempHome, server: &TokenServer) {
    out.check_eq(
        "accessToken written",
        oauth(&home.read_creds()).get("accessToken"),
        Some(&json!(server.last_issued().access)),
    );
}

#[track_caller]
fn check_all_sent(out: &Out, server: &TokenServer, refresh: &str) {
    for (i, r) in server.requests().iter().enumerate() {
        out.check_eq(
            format!("refresh token of request {i}"),
            r.refresh_token(),
            Some(refresh),
        );
    }
}

#[test]
fn retry_after_on_429_is_honoured_then_success() {
    let (home, login, server) = setup(true);
    server.push(Reply::error(429).header("Retry-After", "1"));
    server.push(Reply::error(429).header("Retry-After", "1"));
    let out = Cmd::new(&home).server(&server).arg("--once").run();
    out.expect_code(0)
        .expect_silent()
        .check_eq("requests sent", server.count(), 3);
    check_all_sent(&out, &server, &login.refresh);
    let reqs = server.requests();
    for pair in reqs.windows(2) {
        let gap = pair[1].received_ms - pair[0].received_ms;
        out.check(
            gap >= 950,
            format!("a retry came {gap} ms after a 429 with Retry-After: 1"),
        );
    }
    check_refreshed(&out, &home, &server);
}

#[test]
fn server_errors_then_success() {
    for status in [503, 500, 502, 504, 408] {
        let (home, login, server) = setup(true);
        server.push(Reply::error(status));
        let out = Cmd::new(&home).server(&server).arg("--once").run();
        out.expect_code(0).expect_silent().check_eq(
            format!("requests sent after one HTTP {status}"),
            server.count(),
            2,
        );
        check_all_sent(&out, &server, &login.refresh);
        check_refreshed(&out, &home, &server);
    }
}

#[test]
fn persistent_server_errors_exit_75_after_the_budget_and_leave_the_file_alone() {
    for by_flag in [true, false] {
        let (home, login, server) = setup(true);
        server.always(Reply::error(500));
        let before = home.state();
        let cmd = Cmd::new(&home).server(&server).arg("--once");
        let cmd = if by_flag {
            cmd.args(["--retry-budget", "3s"])
        } else {
            cmd.env("CLAUDE_TOKEND_RETRY_BUDGET", "3s")
        };
        let out = cmd.run();
        out.expect_code(75)
            .check(
                server.count() >= 2,
                format!("only {} request(s): no retry", server.count()),
            )
            .check(
                out.elapsed < Duration::from_secs(20),
                "a 3s budget took far longer",
            )
            .check(!out.stderr.is_empty(), "a failure should say why on stderr")
            .expect_untouched(&home.creds_path(), &before)
            .expect_only_files(&home.claude_dir(), &allowed_siblings(".credentials.json"))
            .expect_no_secret(&login.secrets());
        check_all_sent(&out, &server, &login.refresh);
    }
}

#[test]
fn a_retry_after_beyond_the_budget_ends_the_run_early() {
    let (home, _login, server) = setup(true);
    server.always(Reply::error(429).header("Retry-After", "120"));
    let before = home.state();
    let out = Cmd::new(&home)
        .server(&server)
        .args(["--once", "--retry-budget", "3s"])
        .run();
    out.expect_code(75)
        .check(
            out.elapsed < Duration::from_secs(10),
            "waited although the server asked for more than the budget",
        )
        .check_eq("requests sent", server.count(), 1)
        .expect_untouched(&home.creds_path(), &before);
}

#[test]
fn invalid_grant_exits_77_after_one_request_and_says_to_log_in() {
    for command in ["--once", "refresh"] {
        let (home, login, server) = setup(false);
        let before = home.state();
        let out = Cmd::new(&home).server(&server).arg(command).run();
        out.expect_code(77)
            .check_eq("requests sent", server.count(), 1)
            .expect_stderr_contains("claude-tokend login")
            .expect_untouched(&home.creds_path(), &before)
            .expect_only_files(&home.claude_dir(), &allowed_siblings(".credentials.json"))
            .expect_no_secret(&login.secrets());
    }
}

#[test]
fn other_client_errors_are_permanent() {
    for (status, body) in [
        (401, json!({"error": "invalid_client"})),
        (400, json!({"error": "invalid_request"})),
        (
            403,
            json!({"error": {"type": "permission_error", "message": "no"}}),
        ),
    ] {
        let (home, _login, server) = setup(true);
        server.always(Reply::json(status, &body));
        let before = home.state();
        let out = Cmd::new(&home)
            .server(&server)
            .args(["--once", "--retry-budget", "5s"])
            .run();
        out.check(
            out.code != 0 && out.code != 75,
            format!("HTTP {status} is a permanent failure"),
        )
        .check_eq(
            format!("requests sent (HTTP {status} is never retried)"),
            server.count(),
            1,
        )
        .expect_untouched(&home.creds_path(), &before);
    }
}

#[test]
fn a_refusal_after_another_process_rotated_the_token_adopts_its_result() {
    // Claude Code refreshes while our request is in flight; the server then refuses our (now
    // spent) token. The program must re-read the file, find the new login, and succeed
    // without touching it.
    let (home, _login, server) = setup(true);
    server.push(Reply::invalid_grant().delay(Duration::from_millis(1500)));
    let running = Cmd::new(&home).server(&server).arg("--once").spawn();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while server.count() == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let theirs = Login::fresh();
    let mut doc = home.read_creds();
    doc["claudeAiOauth"]["accessToken"] = json!(theirs.access);
    doc["claudeAiOauth"]["refreshToken"] = json!(theirs.refresh);
    doc["claudeAiOauth"]["expiresAt"] = json!(theirs.expires_at);
    // As Claude Code writes: a temp file renamed over the target.
    let tmp = home.claude_dir().join(".credentials.json.tmp.claude-code");
    write_creds_at(&tmp, &doc);
    std::fs::rename(&tmp, home.creds_path()).expect("rename");
    let written = home.state();
    let out = running.wait();
    out.expect_code(0)
        .check_eq("requests sent", server.count(), 1)
        .expect_untouched(&home.creds_path(), &written);
}

#[test]
fn ok_without_access_token_is_a_failed_attempt_then_success() {
    let (home, _login, server) = setup(true);
    server.push(Reply::json(
        200,
        &json!({"token_type": "Bearer", "expires_in": 3600}),
    ));
    let out = Cmd::new(&home).server(&server).arg("--once").run();
    out.expect_code(0)
        .check_eq("requests sent", server.count(), 2);
    check_refreshed(&out, &home, &server);
}

#[test]
fn ok_without_access_token_never_writes() {
    let (home, login, server) = setup(true);
    server.always(Reply::json(
        200,
        &json!({"token_type": "Bearer", "refresh_token": fake_refresh(), "expires_in": 3600}),
    ));
    let before = home.state();
    let out = Cmd::new(&home)
        .server(&server)
        .args(["--once", "--retry-budget", "2s"])
        .run();
    out.expect_code(75)
        .check(server.count() >= 1, "no request was sent")
        .expect_untouched(&home.creds_path(), &before)
        .expect_only_files(&home.claude_dir(), &allowed_siblings(".credentials.json"))
        .expect_no_secret(&login.secrets());
}

#[test]
fn redirects_are_permanent_and_never_followed() {
    // A long Location is shaped like a token (40 and more token characters, `/` and `.` among
    // them): it is still named whole, so it can be passed as --token-url.
    for (status, long) in [(301, false), (302, true), (307, false), (308, true)] {
        let (home, login, server) = setup(true);
        let location = if long {
            format!(
                "{}/corporate-gateway.example.internal/anthropic/moved{TOKEN_PATH}",
                server.base()
            )
        } else {
            format!("{}/moved{TOKEN_PATH}", server.base())
        };
        server.always(Reply::raw(status, "").header("Location", &location));
        let before = home.state();
        let out = Cmd::new(&home)
            .server(&server)
            .args(["--once", "--retry-budget", "5s"])
            .run();
        let paths: Vec<String> = server.requests().into_iter().map(|r| r.path).collect();
        out.check(
            out.code != 0 && out.code != 75,
            format!("HTTP {status} is a permanent failure"),
        )
        .check_eq(
            format!("requests (HTTP {status} must not be followed or retried)"),
            paths,
            vec![TOKEN_PATH.to_owned()],
        )
        .expect_stderr_contains(&location)
        .expect_untouched(&home.creds_path(), &before)
        .expect_no_secret(&login.secrets());
    }
}

#[test]
fn malformed_file_exits_78_names_the_path_and_is_left_alone() {
    let login = Login::due();
    let cases: Vec<Vec<u8>> = vec![
        b"{ \"claudeAiOauth\": { \"accessToken\": ".to_vec(),
        b"".to_vec(),
        b"[1, 2, 3]\n".to_vec(),
        json!({"claudeAiOauth": 3}).to_string().into_bytes(),
        json!({"claudeAiOauth": {"accessToken": login.access, "refreshToken": login.refresh, "expiresAt": "soon"}})
            .to_string()
            .into_bytes(),
        json!({"claudeAiOauth": {"accessToken": login.access, "refreshToken": 7, "expiresAt": 1}})
            .to_string()
            .into_bytes(),
    ];
    for (i, bytes) in cases.into_iter().enumerate() {
        for command in ["--once", "refresh"] {
            let home = TempHome::new();
            home.write_raw(&bytes);
            let server = TokenServer::for_login(&login);
            let before = home.state();
            let out = Cmd::new(&home).server(&server).arg(command).run();
            out.expect_code(78)
                .expect_stderr_contains(&home.creds_path().display().to_string())
                .check_eq(format!("requests sent (case {i})"), server.count(), 0)
                .expect_untouched(&home.creds_path(), &before)
                .expect_only_files(&home.claude_dir(), &allowed_siblings(".credentials.json"))
                .expect_no_secret(&login.secrets());
        }
    }
}

#[test]
fn missing_file_exits_78_and_creates_nothing() {
    // No .claude directory at all: nothing may be created, not even the directory.
    for command in ["--once", "refresh"] {
        let home = TempHome::new();
        let server = TokenServer::start();
        let out = Cmd::new(&home).server(&server).arg(command).run();
        out.expect_code(78)
            .expect_stderr_contains(&home.creds_path().display().to_string())
            .check_eq("requests sent", server.count(), 0)
            .check_eq(
                "HOME after the run",
                list_names(home.path()),
                Vec::<String>::new(),
            );
    }
}

#[test]
fn missing_file_in_an_existing_directory_exits_78() {
    for command in ["--once", "refresh"] {
        let home = TempHome::new();
        std::fs::create_dir(home.claude_dir()).expect("mkdir .claude");
        let server = TokenServer::start();
        let out = Cmd::new(&home).server(&server).arg(command).run();
        out.expect_code(78)
            .expect_stderr_contains(&home.creds_path().display().to_string())
            .check_eq("requests sent", server.count(), 0)
            .check(
                !home.creds_path().exists(),
                "a credentials file was created",
            )
            .expect_only_files(&home.claude_dir(), &allowed_siblings(".credentials.json"));
    }
}

/// Documents that hold no usable login: each must exit 77 without a request.
fn no_login_cases() -> Vec<(&'static str, Value)> {
    let login = Login::due();
    let mut no_refresh = login.doc();
    no_refresh["claudeAiOauth"]
        .as_object_mut()
        .expect("object")
        .remove("refreshToken");
    let mut null_refresh = login.doc();
    null_refresh["claudeAiOauth"]["refreshToken"] = Value::Null;
    let mut blank = login.doc();
    blank["claudeAiOauth"]["accessToken"] = json!("");
    blank["claudeAiOauth"]["refreshToken"] = json!("");
    blank["claudeAiOauth"]["expiresAt"] = json!(0);
    let mut no_oauth = login.doc();
    no_oauth
        .as_object_mut()
        .expect("object")
        .remove("claudeAiOauth");
    vec![
        ("no refreshToken", no_refresh),
        ("refreshToken null", null_refresh),
        ("blank tokens (logged out)", blank),
        ("no claudeAiOauth", no_oauth),
        ("empty object", json!({})),
    ]
}

#[test]
fn no_usable_login_exits_77_without_a_request() {
    for (what, doc) in no_login_cases() {
        for command in ["--once", "refresh"] {
            let home = TempHome::new();
            home.write_creds(&doc);
            // A server that would accept anything it is asked, were it asked.
            let server = TokenServer::start();
            server.always(Reply::json(
                200,
                &json!({"access_token": fake_access(), "refresh_token": fake_refresh(), "expires_in": 3600}),
            ));
            let before = home.state();
            let out = Cmd::new(&home).server(&server).arg(command).run();
            out.expect_code(77)
                .check_eq(format!("requests sent ({what})"), server.count(), 0)
                .expect_stderr_contains("login")
                .expect_untouched(&home.creds_path(), &before)
                .expect_only_files(&home.claude_dir(), &allowed_siblings(".credentials.json"));
        }
    }
}
