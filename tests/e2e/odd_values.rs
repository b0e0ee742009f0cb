//! Odd values from a setting or from the server, through the built binary (issue 19, items 12
//! to 14): a User-Agent with a control character is a bad setting, a lifetime the server gives
//! is capped at a year and a day, a token's control characters are shown escaped, and messages
//! name a value the way the user wrote it (`500ms`, `CLAUDE_TOKEND_REFRESH_BEFORE`).

use claude_tokend_e2e::*;
use serde_json::json;

/// A HOME with a due login and a server that would accept it: any request shows.
fn due_home() -> (TempHome, Login, TokenServer) {
    let home = TempHome::new();
    let login = Login::due();
    home.write_creds(&login.doc());
    let server = TokenServer::for_login(&login);
    (home, login, server)
}

#[test]
fn a_user_agent_with_a_control_character_is_refused_before_anything_is_sent() {
    for bad in [
        "tokend\nX-Injected: 1",
        "tok\u{7f}end",
        "tok\u{1b}[31mend",
        "a\rb",
    ] {
        for by_env in [false, true] {
            let (home, login, server) = due_home();
            let before = home.state();
            let cmd = Cmd::new(&home).server(&server).arg("--once");
            let cmd = if by_env {
                cmd.env("CLAUDE_TOKEND_USER_AGENT", bad)
            } else {
                cmd.args(["--user-agent", bad])
            };
            let out = cmd.run();
            let named = if by_env {
                "CLAUDE_TOKEND_USER_AGENT"
            } else {
                "--user-agent"
            };
            out.expect_code(2)
                .expect_stderr_contains(named)
                .expect_stderr_contains("control character")
                .check_eq(format!("requests sent ({bad:?})"), server.count(), 0)
                .expect_untouched(&home.creds_path(), &before)
                .expect_no_secret(&login.secrets());
        }
    }
}

/// Tab is allowed in a header value, and so is UTF-8: both reach the server as given.
#[test]
fn a_user_agent_with_a_tab_or_in_utf8_is_sent_as_given() {
    for ua in ["tokend\tbuild 7", "tökend/1 (ünïcode)"] {
        let (home, _login, server) = due_home();
        let out = Cmd::new(&home)
            .server(&server)
            .args(["--once", "--user-agent", ua])
            .run();
        out.expect_code(0)
            .check_eq("requests sent", server.count(), 1)
            .check_eq(
                "User-Agent",
                server.requests()[0].header("user-agent").map(str::to_owned),
                Some(ua.to_owned()),
            );
    }
}

/// `expires_in: 1e300` once saved `expiresAt` = i64::MAX: the login was never refreshed again.
#[test]
fn absurd_lifetimes_from_the_server_are_capped_at_a_year_and_a_day() {
    const YEAR_AND_A_DAY_MS: i64 = 366 * 86_400_000;
    for (expires_in, rt_expires_in) in [
        ("1e300", "1e300"),
        ("18446744073709551615", "\"99999999999999\""),
    ] {
        let (home, _login, server) = due_home();
        let access = fake_access();
        server.push(Reply::raw(
            200,
            format!(
                r#"{{"access_token":"{access}","refresh_token":"{}","expires_in":{expires_in},"refresh_token_expires_in":{rt_expires_in}}}"#,
                fake_refresh()
            ),
        ));
        let before = now_ms();
        let out = Cmd::new(&home).server(&server).arg("--once").run();
        let after = now_ms();
        out.expect_code(0);
        let doc = home.read_creds();
        let o = oauth(&doc);
        out.check_eq("accessToken", o.get("accessToken"), Some(&json!(access)));
        for key in ["expiresAt", "refreshTokenExpiresAt"] {
            let at = o[key].as_i64().unwrap_or(i64::MAX);
            out.check(
                (before + YEAR_AND_A_DAY_MS - 60_000..=after + YEAR_AND_A_DAY_MS).contains(&at),
                format!("{key} = {at}: capped at a year and a day from the request"),
            );
        }
    }
}

/// A token the server made of escape sequences must not reach the terminal raw through the
/// masked form `status` prints.
#[test]
fn status_shows_a_tokens_control_characters_escaped() {
    let home = TempHome::new();
    let login = Login::fresh();
    let mut doc = login.doc();
    doc["claudeAiOauth"]["accessToken"] = json!(format!("{}\u{7}\u{1b}[2J", fake_access()));
    home.write_creds(&doc);
    let out = Cmd::new(&home).arg("status").run();
    out.expect_code(0)
        .check(
            !out.all().contains('\u{1b}') && !out.all().contains('\u{7}'),
            "no raw control character in the output",
        )
        .check(
            out.stdout.contains("…\\u{1b}[2J"),
            "the escape is shown as \\u{1b}",
        );
}

#[test]
fn the_short_lead_warning_names_the_value_as_written_and_where_it_came_from() {
    let home = TempHome::new();
    home.write_creds(&Login::fresh().doc());
    let out = Cmd::new(&home)
        .args(["status", "--refresh-before", "500ms"])
        .run();
    out.expect_code(0)
        .expect_stderr_contains("--refresh-before 500ms")
        .check(!out.stderr.contains(" 0s"), "500ms is not shown as 0s");

    let out = Cmd::new(&home)
        .env("CLAUDE_TOKEND_REFRESH_BEFORE", "4m")
        .arg("status")
        .run();
    out.expect_code(0)
        .expect_stderr_contains("CLAUDE_TOKEND_REFRESH_BEFORE 4m")
        .check(
            !out.stderr.contains("--refresh-before"),
            "a value from the variable is not named as a flag the user never wrote",
        );
}

/// A failing `--mirror-cmd` set by its variable (as a service sets it) is named by the variable.
#[test]
fn a_failing_mirror_command_is_named_the_way_it_was_set() {
    for by_env in [false, true] {
        let (home, _login, server) = due_home();
        let mirror = home.path().join("mirror");
        let cmd = Cmd::new(&home)
            .server(&server)
            .arg("--once")
            .arg("--mirror")
            .arg(&mirror);
        let cmd = if by_env {
            cmd.env("CLAUDE_TOKEND_MIRROR_CMD", "exit 3")
        } else {
            cmd.args(["--mirror-cmd", "exit 3"])
        };
        let out = cmd.run();
        let named = if by_env {
            "warning: CLAUDE_TOKEND_MIRROR_CMD for"
        } else {
            "warning: --mirror-cmd for"
        };
        out.expect_code(0)
            .check_eq("requests sent", server.count(), 1)
            .expect_stderr_contains(named);
    }
}

/// A duration is named as the user could have written it: `4m59s`, not `299s`.
#[test]
fn a_compound_lead_is_warned_about_as_written() {
    let home = TempHome::new();
    home.write_creds(&Login::fresh().doc());
    let out = Cmd::new(&home)
        .args(["status", "--refresh-before", "4m59s"])
        .run();
    out.expect_code(0)
        .expect_stderr_contains("--refresh-before 4m59s");
}

/// A client id with a control character is a bad setting (it would be stored with a login and
/// echoed in messages); the variable's bad value is shown escaped, not sent to the terminal.
#[test]
fn a_client_id_with_a_control_character_is_refused_and_shown_escaped() {
    let (home, login, server) = due_home();
    let before = home.state();
    let out = Cmd::new(&home)
        .server(&server)
        .env("ANTHROPIC_CLIENT_ID", "abc\u{1b}]0;pwned\u{7}")
        .arg("--once")
        .run();
    out.expect_code(2)
        .expect_stderr_contains("ANTHROPIC_CLIENT_ID")
        .expect_stderr_contains("\\u{1b}")
        .check(
            !out.stderr.contains('\u{1b}'),
            "no raw escape reaches the terminal",
        )
        .check_eq("requests sent", server.count(), 0)
        .expect_untouched(&home.creds_path(), &before)
        .expect_no_secret(&login.secrets());
    let out = Cmd::new(&home)
        .server(&server)
        .args(["--once", "--client-id", "a\nb"])
        .run();
    out.expect_code(2)
        .expect_stderr_contains("control character");
}

/// A path is the user's, but may hold anything: `status` and the messages that name it show its
/// control characters escaped, for a login without a login and for one that cannot be read.
#[test]
fn paths_with_control_characters_are_shown_escaped() {
    let home = TempHome::new();
    home.write_creds(&Login::fresh().doc());
    let odd = home.path().join("evil\u{1b}[31mRED\u{1b}[0m");
    std::fs::create_dir(&odd).unwrap();
    std::fs::write(odd.join(".credentials.json"), r#"{"mcpOAuth":{}}"#).unwrap();
    let broken = home.path().join("broken\u{7}dir");
    std::fs::create_dir(&broken).unwrap();
    std::fs::write(broken.join(".credentials.json"), "{not json").unwrap();
    for dir in [&odd, &broken] {
        let out = Cmd::new(&home)
            .arg("status")
            .arg("--config-dir")
            .arg(dir)
            .arg("--config-dir")
            .arg(home.claude_dir())
            .run();
        out.check(
            !out.all().contains('\u{1b}') && !out.all().contains('\u{7}'),
            "no raw control character in the output",
        )
        .check(
            out.all().contains("\\u{1b}") || out.all().contains("\\u{7}"),
            "the path is named, escaped",
        );
    }
}
