//! Logins with one token missing (CONTRACT.md "Interrupted, slow or absent"): an access-only
//! login (an access token and no, or a blank, refresh token: a mirror's copy, a long-lived
//! token) is served as it is and never refreshed; a login with a blank access token and a live
//! refresh token is a login without an access token, refreshed first, not a logout. Logged out
//! means both tokens blank or absent.

use claude_tokend_e2e::*;
use serde_json::{Value, json};

/// `login`'s document with its refresh token removed (`None`) or set to `Some(value)`.
fn with_refresh_token(login: &Login, refresh: Option<&str>) -> Value {
    let mut doc = login.doc();
    let o = doc["claudeAiOauth"].as_object_mut().unwrap();
    match refresh {
        None => {
            o.remove("refreshToken");
        }
        Some(v) => {
            o.insert("refreshToken".into(), json!(v));
        }
    }
    doc
}

/// The two shapes of an access-only login: no `refreshToken`, or a blank one.
fn access_only_docs(login: &Login) -> [(&'static str, Value); 2] {
    [
        ("no refreshToken", with_refresh_token(login, None)),
        ("a blank refreshToken", with_refresh_token(login, Some(""))),
    ]
}

#[test]
fn an_access_only_login_that_is_not_due_is_served_as_it_is() {
    let login = Login::fresh();
    for (what, doc) in access_only_docs(&login) {
        let home = TempHome::new();
        home.write_creds(&doc);
        let server = TokenServer::start();
        let before = home.state();
        Cmd::new(&home)
            .server(&server)
            .arg("--once")
            .run()
            .expect_code(0)
            .expect_silent();
        let out = Cmd::new(&home).server(&server).arg("token").run();
        out.expect_code(0)
            .check_eq(
                format!("{what}: token's stdout"),
                out.stdout.as_str(),
                &format!("{}\n", login.access),
            )
            .check_eq("requests sent", server.count(), 0)
            .expect_untouched(&home.creds_path(), &before);
    }
}

#[test]
fn a_due_access_only_login_is_77_from_once_saying_it_cannot_be_refreshed_here() {
    let login = Login::due();
    for (what, doc) in access_only_docs(&login) {
        let home = TempHome::new();
        home.write_creds(&doc);
        let server = TokenServer::start();
        let before = home.state();
        let out = Cmd::new(&home).server(&server).arg("--once").run();
        out.expect_code(77)
            .check(
                out.stderr.contains("cannot be refreshed here")
                    && out.stderr.contains("access-only"),
                format!("{what}: stderr says why it cannot be refreshed"),
            )
            .check_eq("requests sent", server.count(), 0)
            .expect_no_secret(std::slice::from_ref(&login.access))
            .expect_untouched(&home.creds_path(), &before);
    }
}

/// `token` hands out a due access-only token while it has more than a minute left (nothing
/// could make it fresher), with a warning; under a minute it is 77 and prints nothing.
#[test]
fn token_serves_a_due_access_only_login_while_it_has_over_a_minute_left() {
    let due = Login::due();
    for (what, doc) in access_only_docs(&due) {
        let home = TempHome::new();
        home.write_creds(&doc);
        let server = TokenServer::start();
        let out = Cmd::new(&home).server(&server).arg("token").run();
        out.expect_code(0)
            .check_eq(
                format!("{what}: stdout"),
                out.stdout.as_str(),
                &format!("{}\n", due.access),
            )
            .expect_stderr_contains("cannot be refreshed here")
            .check_eq("requests sent", server.count(), 0);
    }
    let ending = Login::expiring_in(30);
    for (what, doc) in access_only_docs(&ending) {
        let home = TempHome::new();
        home.write_creds(&doc);
        let server = TokenServer::start();
        let out = Cmd::new(&home).server(&server).arg("token").run();
        out.expect_code(77)
            .check_eq(format!("{what}: stdout"), out.stdout.as_str(), "")
            .expect_stderr_contains("cannot be refreshed here")
            .check_eq("requests sent", server.count(), 0);
    }
}

/// A blank `accessToken` beside a live refresh token, its `expiresAt` hours away: not a
/// logout, and not fresh either. `--once` refreshes it (one request) and exits 0.
#[test]
fn once_refreshes_a_login_whose_access_token_is_blank() {
    let login = Login::fresh();
    let mut doc = login.doc();
    doc["claudeAiOauth"]["accessToken"] = json!("");
    let home = TempHome::new();
    home.write_creds(&doc);
    let server = TokenServer::for_login(&login);
    let out = Cmd::new(&home).server(&server).arg("--once").run();
    out.expect_code(0)
        .expect_silent()
        .check_eq("requests sent", server.count(), 1)
        .expect_latest_pair("the file", &home.read_creds(), &server, &doc);
}

/// `token` never prints an empty line: the same login is refreshed first, the new token
/// printed.
#[test]
fn token_refreshes_a_login_whose_access_token_is_blank_and_prints_the_new_one() {
    let login = Login::fresh();
    for blank in ["", "   "] {
        let mut doc = login.doc();
        doc["claudeAiOauth"]["accessToken"] = json!(blank);
        let home = TempHome::new();
        home.write_creds(&doc);
        let server = TokenServer::for_login(&login);
        let out = Cmd::new(&home).server(&server).arg("token").run();
        // The exit code first: a failed run then shows its output, not "no tokens issued".
        out.expect_code(0);
        let issued = server.last_issued();
        out.check_eq(
            format!("stdout with accessToken {blank:?}"),
            out.stdout.as_str(),
            &format!("{}\n", issued.access),
        )
        .check_eq("requests sent", server.count(), 1);
    }
}

/// Logged out is both tokens blank or absent: 77 from both, nothing sent, nothing printed.
#[test]
fn both_tokens_blank_or_absent_is_logged_out() {
    let login = Login::fresh();
    let shapes = [
        json!({"accessToken": "", "refreshToken": "", "expiresAt": 0}),
        json!({"accessToken": "", "expiresAt": login.expires_at}),
        json!({"expiresAt": login.expires_at}),
    ];
    for oauth in shapes {
        let home = TempHome::new();
        home.write_creds(&json!({"claudeAiOauth": oauth}));
        let server = TokenServer::start();
        for command in ["--once", "token"] {
            let out = Cmd::new(&home).server(&server).arg(command).run();
            out.expect_code(77)
                .check_eq(
                    format!("{command} {oauth}: stdout"),
                    out.stdout.as_str(),
                    "",
                )
                .check_eq("requests sent", server.count(), 0);
        }
    }
}

/// An access-only login without `expiresAt`: nothing says the token still works, so every
/// command agrees: `status` calls it expired (1), `--once` cannot refresh it (77), and `token`
/// does not hand it out (77). Found by the hostile review (`token` printed it, exit 0).
#[test]
fn an_access_only_login_without_an_expiry_is_not_handed_out() {
    let home = TempHome::new();
    home.write_creds(&serde_json::json!({
        "claudeAiOauth": {"accessToken": "sk-ant-oat01-NOEXPIRY-aaaaaaaaaaaaaaaa"}
    }));
    let server = TokenServer::start();
    let status = Cmd::new(&home).server(&server).arg("status").run();
    status.expect_code(1);
    let once = Cmd::new(&home).server(&server).arg("--once").run();
    once.expect_code(77);
    let token = Cmd::new(&home).server(&server).arg("token").run();
    token
        .expect_code(77)
        .check(token.stdout.is_empty(), "no token on stdout")
        .check_eq("requests", server.count(), 0);
}
