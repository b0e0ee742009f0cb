//! A refusal is final for that refresh token (CONTRACT.md "Token endpoint exchange": permanent
//! errors are "never retried with the same refresh token"): once the server has refused a
//! refresh token, no later run of this program sends it again, whether it is a cron `--once`,
//! a status bar's `token`, an explicit `refresh` or a restarted daemon. A different refresh
//! token (a new login) is sent as usual. And `logout` forgets what the program remembered of
//! the login (the account's email) along with it.

use std::time::Duration;

use claude_tokend_e2e::*;

/// A due login and a server that knows no token, so it refuses every refresh (`invalid_grant`).
fn refused_setup() -> (TempHome, Login, TokenServer) {
    let home = TempHome::new();
    let login = Login::due();
    home.write_creds(&login.doc());
    (home, login, TokenServer::start())
}

#[test]
fn a_refused_refresh_token_is_never_sent_again_by_any_command() {
    let (home, login, server) = refused_setup();
    let first = Cmd::new(&home).server(&server).arg("--once").run();
    first
        .expect_code(77)
        .check_eq("requests after the refusal", server.count(), 1);
    for args in [
        &["--once"][..],
        &["token"],
        &["refresh"],
        &["token", "--json"],
    ] {
        let out = Cmd::new(&home).server(&server).args(args).run();
        out.expect_code(77)
            .expect_stderr_contains("already refused")
            .expect_stderr_contains("claude-tokend login")
            .check_eq(format!("requests after {args:?}"), server.count(), 1)
            .check(out.stdout.is_empty(), "nothing on stdout")
            .expect_no_secret(&login.secrets());
    }

    // A new login (another refresh token) is not held back by the old refusal.
    let new_login = Login::due();
    home.write_creds(&new_login.doc());
    let out = Cmd::new(&home).server(&server).arg("--once").run();
    out.expect_code(77)
        .check_eq("requests after a new login", server.count(), 2)
        .check_eq(
            "the new login's refresh token was sent",
            server.requests().last().and_then(|r| r.refresh_token()),
            Some(new_login.refresh.as_str()),
        );
}

/// A daemon started after a one-shot run was refused sends nothing with that token, and says a
/// login is needed.
#[test]
fn a_daemon_started_after_a_refusal_does_not_send_the_refused_token() {
    let (home, _login, server) = refused_setup();
    Cmd::new(&home)
        .server(&server)
        .arg("--once")
        .run()
        .expect_code(77);
    let log = home.path().join("daemon.log");
    let d = Cmd::new(&home)
        .server(&server)
        .timeout(Duration::from_secs(60))
        .stderr_to(&log)
        .spawn();
    let said = wait_until(Duration::from_secs(15), || {
        std::fs::read_to_string(&log).is_ok_and(|text| text.contains("already refused"))
    });
    let out = stop(d);
    out.check(said, "the daemon said the token was already refused")
        .check_eq("requests (only the first refusal)", server.count(), 1);
}

/// `logout` removes the account's email this program recorded at its own login from its lock
/// file: the login is gone, and so is what was remembered of it.
#[test]
fn logout_forgets_the_recorded_account() {
    let home = TempHome::new();
    let login = Login::fresh();
    home.write_creds(&login.doc());
    let lock = home.claude_dir().join(".credentials.json.lock");
    std::fs::write(&lock, "account 0123456789abcdef someone@example.test\n").unwrap();
    let out = Cmd::new(&home).args(["logout", "--yes"]).run();
    out.expect_code(0);
    let text = std::fs::read_to_string(&lock).unwrap_or_default();
    out.check(
        !text.contains("someone@example.test"),
        format!("the lock file still names the account after logout: {text:?}"),
    );
}
