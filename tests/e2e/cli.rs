//! The command line and the settings: a bad value, from a flag or from the environment, exits 2
//! before anything is read or sent.

use claude_tokend_e2e::*;

/// A HOME with a due login and a server that would accept it: any request shows.
fn setup() -> (TempHome, Login, TokenServer) {
    let home = TempHome::new();
    let login = Login::due();
    home.write_creds(&login.doc());
    let server = TokenServer::for_login(&login);
    (home, login, server)
}

#[test]
fn plain_http_to_a_remote_host_is_refused_by_flag_and_by_env() {
    // When this machine has a non-loopback address, the endpoint listens there: a program that
    // sent the request anyway would be caught. Otherwise an unresolvable host stands in.
    let remote = non_loopback_ip().map(TokenServer::start_on);
    let url = match &remote {
        Some(s) => s.url(),
        None => "http://token-endpoint.example.invalid/v1/oauth/token".to_owned(),
    };
    for (command, by_flag) in [
        ("--once", true),
        ("--once", false),
        ("refresh", true),
        ("refresh", false),
    ] {
        let (home, login, server) = setup();
        if let Some(r) = &remote {
            r.accept_refresh(&login.refresh);
        }
        let before = home.state();
        let cmd = Cmd::new(&home).arg(command);
        let cmd = if by_flag {
            // The loopback server in the environment is overridden by the flag.
            cmd.server(&server).args(["--token-url", &url])
        } else {
            cmd.env("CLAUDE_TOKEND_TOKEN_URL", &url)
        };
        let out = cmd.run();
        out.expect_code(2)
            .expect_stderr_contains("https")
            .check_eq("requests to the loopback server", server.count(), 0)
            .check_eq(
                "requests to the plain-http endpoint",
                remote.as_ref().map_or(0, TokenServer::count),
                0,
            )
            .expect_untouched(&home.creds_path(), &before);
    }
}

#[test]
fn a_loopback_http_endpoint_is_accepted() {
    let (home, _login, server) = setup();
    // By flag, with no CLAUDE_TOKEND_TOKEN_URL in the environment.
    let out = Cmd::new(&home)
        .args(["--once", "--token-url", &server.url()])
        .run();
    out.expect_code(0)
        .check_eq("requests sent", server.count(), 1);
}

#[test]
fn bad_durations_are_usage_errors_by_flag_and_by_env() {
    let cases: [(&str, &str, &str); 8] = [
        ("--refresh-before", "CLAUDE_TOKEND_REFRESH_BEFORE", "15"),
        ("--refresh-before", "CLAUDE_TOKEND_REFRESH_BEFORE", "soon"),
        ("--refresh-before", "CLAUDE_TOKEND_REFRESH_BEFORE", "-5m"),
        ("--refresh-before", "CLAUDE_TOKEND_REFRESH_BEFORE", "1.5h"),
        ("--refresh-before", "CLAUDE_TOKEND_REFRESH_BEFORE", ""),
        ("--retry-budget", "CLAUDE_TOKEND_RETRY_BUDGET", "3"),
        ("--retry-budget", "CLAUDE_TOKEND_RETRY_BUDGET", "3 s"),
        ("--retry-budget", "CLAUDE_TOKEND_RETRY_BUDGET", "x"),
    ];
    for (flag, env, value) in cases {
        for by_flag in [true, false] {
            // An empty environment variable may count as unset; only the flag form is checked.
            if value.is_empty() && !by_flag {
                continue;
            }
            let (home, login, server) = setup();
            let before = home.state();
            let cmd = Cmd::new(&home).server(&server).arg("--once");
            let cmd = if by_flag {
                cmd.arg(format!("{flag}={value}"))
            } else {
                cmd.env(env, value)
            };
            let out = cmd.run();
            out.expect_code(2)
                .check(
                    !out.stderr.is_empty(),
                    "a usage error should say what is wrong",
                )
                .check_eq("requests sent", server.count(), 0)
                .expect_untouched(&home.creds_path(), &before)
                .expect_no_secret(&login.secrets());
        }
    }
}

#[test]
fn bad_urls_are_usage_errors() {
    for url in [
        "not a url",
        "ftp://127.0.0.1/v1/oauth/token",
        "http://127.0.0.1.nip.io/t",
    ] {
        let (home, _login, server) = setup();
        let before = home.state();
        let out = Cmd::new(&home)
            .server(&server)
            .args(["--once", "--token-url", url])
            .run();
        out.expect_code(2)
            .check_eq("requests sent", server.count(), 0)
            .expect_untouched(&home.creds_path(), &before);
    }
}

#[test]
fn unknown_flags_and_commands_are_usage_errors() {
    for args in [
        vec!["--once", "--no-such-flag"],
        vec!["no-such-command"],
        vec!["--once", "refresh"],
        vec!["status", "--jsonn"],
    ] {
        let (home, _login, server) = setup();
        let before = home.state();
        let out = Cmd::new(&home).server(&server).args(&args).run();
        out.expect_code(2)
            .check(
                !out.stderr.is_empty(),
                "a usage error should say what is wrong",
            )
            .check_eq("requests sent", server.count(), 0)
            .expect_untouched(&home.creds_path(), &before);
    }
}

#[test]
fn a_refresh_lead_under_five_minutes_is_accepted_with_a_warning() {
    let home = TempHome::new();
    let login = Login::fresh();
    home.write_creds(&login.doc());
    let out = Cmd::new(&home)
        .args(["status", "--refresh-before", "1m"])
        .run();
    out.expect_code(0).check(
        out.stderr.to_lowercase().contains("warn"),
        "a lead under Claude Code's 5 minutes should be warned about",
    );
}

#[test]
fn version_and_help() {
    let out = Cmd::bare().arg("--version").run();
    out.expect_code(0).check(
        out.stdout.contains(env!("CARGO_PKG_VERSION")),
        "--version prints the version",
    );
    let out = Cmd::bare().arg("--help").run();
    out.expect_code(0)
        .check(out.stdout.contains("--once"), "--help lists --once");
}
