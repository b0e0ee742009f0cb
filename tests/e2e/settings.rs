//! Settings from the environment and their bounds: a bad value from a variable is reported under
//! the variable's name, an empty `CLAUDE_TOKEND_*` variable counts as unset, and every duration
//! has an allowed range, so no value, however absurd, crashes the program (exit 2 instead).

use claude_tokend_e2e::*;

/// A HOME with a due login and a server that would accept it: any request shows.
fn setup() -> (TempHome, Login, TokenServer) {
    let home = TempHome::new();
    let login = Login::due();
    home.write_creds(&login.doc());
    let server = TokenServer::for_login(&login);
    (home, login, server)
}

/// The environment variables `--help` says the program reads, so a setting added later is
/// covered by the tests below without editing them.
fn documented_variables() -> Vec<String> {
    let out = Cmd::bare().arg("--help").run();
    out.expect_code(0);
    let text = out.stdout.split_whitespace().collect::<Vec<_>>().join(" ");
    let names: Vec<String> = text
        .split("[env: ")
        .skip(1)
        .filter_map(|rest| rest.split_once('=').map(|(name, _)| name.to_owned()))
        .collect();
    for known in [
        "CLAUDE_TOKEND_CREDENTIALS",
        "CLAUDE_TOKEND_TOKEN_URL",
        "CLAUDE_TOKEND_REFRESH_BEFORE",
        "CLAUDE_TOKEND_RETRY_BUDGET",
        "CLAUDE_TOKEND_USER_AGENT",
        "ANTHROPIC_CLIENT_ID",
    ] {
        out.check(
            names.iter().any(|n| n == known),
            format!("--help should name {known}; found {names:?}"),
        );
    }
    names
}

#[test]
fn a_bad_value_from_the_environment_is_reported_under_the_variable() {
    let cases = [
        ("CLAUDE_TOKEND_REFRESH_BEFORE", "banana", "--refresh-before"),
        ("CLAUDE_TOKEND_RETRY_BUDGET", "3", "--retry-budget"),
        (
            "CLAUDE_TOKEND_TOKEN_URL",
            "http://example.com/token",
            "--token-url",
        ),
        ("CLAUDE_TOKEND_USER_AGENT", "   ", "--user-agent"),
        ("ANTHROPIC_CLIENT_ID", " ", "--client-id"),
    ];
    for (var, value, flag) in cases {
        let (home, login, server) = setup();
        let before = home.state();
        // The variable is set after the server's URL, so a bad CLAUDE_TOKEND_TOKEN_URL replaces it.
        let out = Cmd::new(&home)
            .server(&server)
            .env(var, value)
            .arg("--once")
            .run();
        out.expect_code(2)
            .expect_stderr_contains(&format!("invalid value '{value}' for {var}"))
            .check(
                !out.stderr.contains(&format!("'{flag}")),
                format!("the error should name {var}, not {flag}"),
            )
            .check_eq("requests sent", server.count(), 0)
            .expect_untouched(&home.creds_path(), &before)
            .expect_no_secret(&login.secrets());
    }
}

/// The flag wins over the variable, as it does for a good value: a bad variable it overrides is
/// never used, so it is not an error.
#[test]
fn a_flag_overrides_a_bad_variable() {
    let home = TempHome::new();
    home.write_creds(&Login::fresh().doc());
    let out = Cmd::new(&home)
        .env("CLAUDE_TOKEND_REFRESH_BEFORE", "banana")
        .args(["status", "--refresh-before", "15m"])
        .run();
    out.expect_code(0);
}

#[test]
fn empty_variables_count_as_unset() {
    let names = documented_variables();
    // One at a time, so a failure names the variable; `status` sends nothing whatever the URLs.
    for name in &names {
        let home = TempHome::new();
        home.write_creds(&Login::fresh().doc());
        let out = Cmd::new(&home).env(name, "").arg("status").run();
        out.check_eq(format!("exit code with {name}= (empty)"), out.code, 0);
    }
    // All at once, on a refresh: the request carries the defaults (client id, User-Agent), and
    // the default lead (15 minutes) finds the login due.
    let (home, _login, server) = setup();
    let mut cmd = Cmd::new(&home);
    for name in &names {
        cmd = cmd.env(name, "");
    }
    let out = cmd.args(["--once", "--token-url", &server.url()]).run();
    out.expect_code(0)
        .check_eq("requests sent", server.count(), 1);
    let req = &server.requests()[0];
    out.check_eq(
        "client_id",
        req.body["client_id"].as_str(),
        Some(DEFAULT_CLIENT_ID),
    )
    .check_eq(
        "User-Agent",
        req.header("user-agent").map(str::to_owned),
        Some(default_user_agent()),
    );
}

/// A lead over 4 hours is refused, by flag and by variable (named), with the allowed range; 4
/// hours itself is accepted.
#[test]
fn a_refresh_lead_over_four_hours_is_refused() {
    for (by_flag, value) in [(true, "5h"), (false, "5h"), (true, "4h1s"), (false, "1d")] {
        let (home, login, server) = setup();
        let before = home.state();
        let cmd = Cmd::new(&home).server(&server).arg("--once");
        let cmd = if by_flag {
            cmd.args(["--refresh-before", value])
        } else {
            cmd.env("CLAUDE_TOKEND_REFRESH_BEFORE", value)
        };
        let out = cmd.run();
        out.expect_code(2)
            .expect_stderr_contains("from 0s to 4h")
            .check(
                by_flag || out.stderr.contains("CLAUDE_TOKEND_REFRESH_BEFORE"),
                "the variable is named",
            )
            .check_eq("requests sent", server.count(), 0)
            .expect_untouched(&home.creds_path(), &before)
            .expect_no_secret(&login.secrets());
    }
    let home = TempHome::new();
    home.write_creds(&Login::fresh().doc());
    let out = Cmd::new(&home)
        .args(["status", "--refresh-before", "4h"])
        .run();
    out.expect_code(0);
}

/// Absurd durations end with a usage error, never a crash (`Instant + Duration` overflowing
/// used to abort `--once` with 134): every duration setting has an allowed range.
#[test]
fn absurd_durations_are_usage_errors_not_crashes() {
    let cases = [
        (
            "--retry-budget",
            "CLAUDE_TOKEND_RETRY_BUDGET",
            "999999999999999d",
            "1d",
        ),
        ("--retry-budget", "CLAUDE_TOKEND_RETRY_BUDGET", "2d", "1d"),
        (
            "--retry-budget",
            "CLAUDE_TOKEND_RETRY_BUDGET",
            "99999999999999999999999s",
            "1d",
        ),
        (
            "--refresh-before",
            "CLAUDE_TOKEND_REFRESH_BEFORE",
            "999999999999999d",
            "4h",
        ),
        (
            "--refresh-before",
            "CLAUDE_TOKEND_REFRESH_BEFORE",
            "18446744073709551615s1s",
            "4h",
        ),
    ];
    for (flag, var, value, max) in cases {
        for command in ["--once", "refresh"] {
            for by_flag in [true, false] {
                let (home, login, server) = setup();
                let before = home.state();
                let cmd = Cmd::new(&home).server(&server).arg(command);
                let cmd = if by_flag {
                    cmd.args([flag, value])
                } else {
                    cmd.env(var, value)
                };
                let out = cmd.run();
                out.expect_code(2)
                    .expect_stderr_contains(&format!("allowed from 0s to {max}"))
                    .check(
                        by_flag || out.stderr.contains(var),
                        format!("the error should name {var}"),
                    )
                    .check_eq("requests sent", server.count(), 0)
                    .expect_untouched(&home.creds_path(), &before)
                    .expect_no_secret(&login.secrets());
            }
        }
    }
    // The largest budget allowed runs normally.
    let (home, _login, server) = setup();
    let out = Cmd::new(&home)
        .server(&server)
        .args(["--once", "--retry-budget", "1d"])
        .run();
    out.expect_code(0)
        .check_eq("requests sent", server.count(), 1);
}
