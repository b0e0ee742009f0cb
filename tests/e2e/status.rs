//! `status [--json]`: what the login looks like, never a whole token; exit 0 while the access
//! token is valid, 1 once it has expired. It never sends anything or changes the file.

use std::os::unix::fs::PermissionsExt;

use claude_tokend_e2e::*;
use serde_json::Value;

/// The last four characters of a token: what the contract's masked form shows.
fn tail(token: &str) -> &str {
    &token[token.len() - 4..]
}

fn setup(login: &Login) -> (TempHome, TokenServer) {
    let home = TempHome::new();
    home.write_creds(&login.doc());
    // Any request to it would show.
    let server = TokenServer::for_login(login);
    (home, server)
}

#[test]
fn status_shows_a_valid_login_masked_and_exits_0() {
    let login = Login::fresh();
    let (home, server) = setup(&login);
    let before = home.state();
    let out = Cmd::new(&home).server(&server).arg("status").run();
    out.expect_code(0)
        .expect_masked(&login.access)
        .expect_masked(&login.refresh)
        .check(
            out.stdout.contains(tail(&login.access)) && out.stdout.contains(tail(&login.refresh)),
            "status shows the masked tokens (their last characters)",
        )
        .check(
            out.stdout
                .contains(&home.creds_path().display().to_string()),
            "status shows the path",
        )
        .check(
            out.stdout.contains("user:inference"),
            "status shows the scopes",
        )
        .check(out.stdout.contains("max"), "status shows the plan")
        .check_eq("requests sent", server.count(), 0)
        .expect_untouched(&home.creds_path(), &before);
}

#[test]
fn status_of_an_expired_login_exits_1() {
    let login = Login::expired();
    let (home, server) = setup(&login);
    let before = home.state();
    let out = Cmd::new(&home).server(&server).arg("status").run();
    out.expect_code(1)
        .expect_masked(&login.access)
        .expect_masked(&login.refresh)
        .check_eq("requests sent", server.count(), 0)
        .expect_untouched(&home.creds_path(), &before);
}

#[test]
fn status_json_parses_and_holds_no_whole_token() {
    for (login, code) in [(Login::fresh(), 0), (Login::expired(), 1)] {
        let (home, server) = setup(&login);
        let before = home.state();
        let out = Cmd::new(&home)
            .server(&server)
            .args(["status", "--json"])
            .run();
        out.expect_code(code)
            .expect_masked(&login.access)
            .expect_masked(&login.refresh);
        let parsed: Value = serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("status --json is not JSON ({e})\n{}", out.context()));
        let text = parsed.to_string();
        out.check(parsed.is_object(), "status --json prints an object")
            .check(
                text.contains(&login.expires_at.to_string()),
                "status --json carries expiresAt",
            )
            .check(
                text.contains(&home.creds_path().display().to_string()),
                "status --json carries the path",
            )
            .check(
                text.contains(tail(&login.access)),
                "status --json carries the masked access token",
            )
            .check_eq("requests sent", server.count(), 0)
            .expect_untouched(&home.creds_path(), &before);
    }
}

#[test]
fn status_warns_when_the_file_is_not_0600() {
    let login = Login::fresh();
    let (home, _server) = setup(&login);
    let out = Cmd::new(&home).arg("status").run();
    out.expect_code(0)
        .check(!out.stderr.contains("600"), "no warning for a 0600 file");

    std::fs::set_permissions(home.creds_path(), std::fs::Permissions::from_mode(0o644))
        .expect("chmod");
    let before = home.state();
    for json_flag in [false, true] {
        let mut cmd = Cmd::new(&home).arg("status");
        if json_flag {
            cmd = cmd.arg("--json");
        }
        let out = cmd.run();
        out.expect_code(0)
            .check(
                out.stderr.contains("644") && out.stderr.contains("600"),
                "status warns that the file is 0644 and should be 0600",
            )
            .expect_untouched(&home.creds_path(), &before);
        if json_flag {
            out.check(
                serde_json::from_str::<Value>(&out.stdout).is_ok(),
                "the warning stays out of the JSON on stdout",
            );
        }
    }
}

#[test]
fn status_of_a_missing_file_exits_78() {
    let home = TempHome::new();
    let out = Cmd::new(&home).arg("status").run();
    out.expect_code(78)
        .expect_stderr_contains(&home.creds_path().display().to_string())
        .check_eq(
            "HOME after the run",
            list_names(home.path()),
            Vec::<String>::new(),
        );
}

#[test]
fn status_without_a_login_exits_77() {
    let home = TempHome::new();
    let mut doc = Login::fresh().doc();
    doc.as_object_mut().expect("object").remove("claudeAiOauth");
    home.write_creds(&doc);
    let out = Cmd::new(&home).arg("status").run();
    out.expect_code(77).expect_stderr_contains("login");
}

/// Claude Code's own config, `.claude.json`, as it keeps the signed-in account.
fn claude_json(email: &str) -> Value {
    serde_json::json!({
        "numStartups": 3,
        "oauthAccount": {"accountUuid": "00000000-0000-4000-8000-000000000001",
                         "emailAddress": email, "organizationUuid": "org"},
        "projects": {}
    })
}

#[test]
fn status_shows_the_email_from_claude_codes_config_and_never_writes_it() {
    // ~/.claude.json without CLAUDE_CONFIG_DIR.
    let login = Login::fresh();
    let (home, _server) = setup(&login);
    let config = home.path().join(".claude.json");
    write_creds_at(&config, &claude_json("ada@example.test"));
    let before = FileState::of(&config);
    let out = Cmd::new(&home).arg("status").run();
    out.expect_code(0)
        .check(
            out.stdout.contains("ada@example.test"),
            "status shows the email",
        )
        .expect_untouched(&config, &before);
    let out = Cmd::new(&home).args(["status", "--json"]).run();
    let parsed: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("status --json is not JSON ({e})\n{}", out.context()));
    out.expect_code(0)
        .check_eq("email", &parsed["email"], &Value::from("ada@example.test"))
        .expect_untouched(&config, &before);

    // $CLAUDE_CONFIG_DIR/.claude.json when CLAUDE_CONFIG_DIR is set; ~/.claude.json is not read.
    let dir = home.path().join("other-config");
    write_creds_at(&dir.join(".credentials.json"), &Login::fresh().doc());
    write_creds_at(&dir.join(".claude.json"), &claude_json("bo@example.test"));
    let out = Cmd::new(&home)
        .env("CLAUDE_CONFIG_DIR", &dir)
        .arg("status")
        .run();
    out.expect_code(0)
        .check(
            out.stdout.contains("bo@example.test"),
            "the config dir's email",
        )
        .check(!out.stdout.contains("ada@example.test"), "not HOME's");
}

#[test]
fn status_ignores_a_missing_or_malformed_claude_json() {
    let cases: [Option<&[u8]>; 5] = [
        None,
        Some(b"{\"oauthAccount\": {\"emailAddr"),
        Some(b"[1, 2]"),
        Some(b"{\"oauthAccount\": 5}"),
        Some(b"{\"oauthAccount\": {\"emailAddress\": 7}}"),
    ];
    for bytes in cases {
        let login = Login::fresh();
        let (home, _server) = setup(&login);
        let config = home.path().join(".claude.json");
        if let Some(b) = bytes {
            write_raw_at(&config, b);
        }
        let out = Cmd::new(&home).args(["status", "--json"]).run();
        let parsed: Value = serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("status --json is not JSON ({e})\n{}", out.context()));
        out.expect_code(0)
            .check_eq("email", &parsed["email"], &Value::Null)
            .check(
                out.stderr.is_empty(),
                "nothing said about Claude Code's config",
            );
        let out = Cmd::new(&home).arg("status").run();
        out.expect_code(0).check(
            out.stderr.is_empty(),
            "nothing said about Claude Code's config",
        );
    }
}

/// `status --json`'s account: (email, emailSource).
fn account_of(home: &TempHome) -> (Value, Value) {
    let out = Cmd::new(home).args(["status", "--json"]).run();
    let parsed: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("status --json is not JSON ({e})\n{}", out.context()));
    (parsed["email"].clone(), parsed["emailSource"].clone())
}

/// "The account `status` shows is the stored login's": after `claude-tokend login` as another
/// account than Claude Code's config names, `status` shows the email the login printed, and
/// keeps showing it after this program's own refreshes; once another writer replaces the
/// refresh token (Claude Code's own refresh, say), it shows Claude Code's, labelled as such.
#[test]
fn status_shows_the_account_of_our_own_login_while_the_login_descends_from_it() {
    use crate::login::{CC_SCOPES, MANUAL_REDIRECT, authorize, start_login};
    let home = TempHome::new();
    write_creds_at(
        &home.path().join(".claude.json"),
        &claude_json("claude-code@example.test"),
    );
    let server = TokenServer::start();
    server.set_profile(Reply::profile("ours@example.test", "claude_max", "tier"));
    let mut run = start_login(&home, &server, &[]);
    let (code, state) = authorize(&mut run, &server, CC_SCOPES, MANUAL_REDIRECT);
    run.paste(&format!("{code}#{state}"));
    let login = run.finish();
    login.expect_code(0).check(
        login.stdout.contains("ours@example.test"),
        "login printed the email",
    );
    let ours = (Value::from("ours@example.test"), Value::from("login"));
    login.check_eq("after the login", account_of(&home), ours.clone());
    let text = Cmd::new(&home).arg("status").run();
    text.expect_code(0)
        .check(
            text.stdout.contains("ours@example.test"),
            "the text shows our login's email",
        )
        .check(
            !text.stdout.contains("claude-code@example.test"),
            "the text shows Claude Code's email",
        );

    // Our own refreshes: the login still descends from ours.
    for _ in 0..2 {
        Cmd::new(&home)
            .env("CLAUDE_TOKEND_TOKEN_URL", server.url())
            .arg("refresh")
            .run()
            .expect_code(0);
    }
    login
        .check_eq("refreshes made", server.count(), 3)
        .check_eq("after our refreshes", account_of(&home), ours);

    // Another writer's refresh ends the descent.
    let mut doc = home.read_creds();
    doc["claudeAiOauth"]["refreshToken"] = Value::from(fake_refresh());
    replace_atomically(&home.creds_path(), &doc);
    login.check_eq(
        "after another writer's refresh",
        account_of(&home),
        (
            Value::from("claude-code@example.test"),
            Value::from("claude-code"),
        ),
    );
    let text = Cmd::new(&home).arg("status").run();
    text.check(
        text.stdout.contains("claude-code@example.test") && text.stdout.contains("Claude Code"),
        "the text labels Claude Code's email as Claude Code's",
    );
}

#[test]
fn status_json_says_where_the_email_comes_from_or_null() {
    let login = Login::fresh();
    let (home, _server) = setup(&login);
    check_eq(
        "no email anywhere",
        account_of(&home),
        (Value::Null, Value::Null),
    );
    write_creds_at(
        &home.path().join(".claude.json"),
        &claude_json("ada@example.test"),
    );
    check_eq(
        "Claude Code's",
        account_of(&home),
        (Value::from("ada@example.test"), Value::from("claude-code")),
    );
}

/// A login without a refresh token (an access-only copy, a long-lived token) is not "due now":
/// nothing here can refresh it. `status` says it is access-only and when it ends, in text and
/// in JSON, and still exits 0 while the access token is valid.
#[test]
fn status_shows_an_access_only_login_as_such() {
    for refresh in [None, Some("")] {
        let home = TempHome::new();
        let login = Login::expiring_in(10 * 60);
        let mut doc = login.doc();
        match refresh {
            None => {
                doc["claudeAiOauth"]
                    .as_object_mut()
                    .unwrap()
                    .remove("refreshToken");
            }
            Some(blank) => doc["claudeAiOauth"]["refreshToken"] = blank.into(),
        }
        home.write_creds(&doc);
        let server = TokenServer::for_login(&login);
        let out = Cmd::new(&home).server(&server).arg("status").run();
        out.expect_code(0)
            .check(
                !out.stdout.contains("Refresh due:    now"),
                "not shown as due for a refresh",
            )
            .check(out.stdout.contains("access-only"), "shown as access-only")
            .check(
                out.stdout.contains("cannot be refreshed here"),
                "says it cannot be refreshed here",
            )
            .check_eq("requests", server.count(), 0);

        let out = Cmd::new(&home)
            .server(&server)
            .args(["status", "--json"])
            .run();
        out.expect_code(0);
        let v: Value = serde_json::from_str(&out.stdout).expect("JSON");
        out.check_eq("accessOnly", &v["accessOnly"], &Value::Bool(true))
            .check_eq("refreshDueAt", &v["refreshDueAt"], &Value::Null);
    }

    // A login with its refresh token is not access-only.
    let login = Login::fresh();
    let (home, server) = setup(&login);
    let out = Cmd::new(&home)
        .server(&server)
        .args(["status", "--json"])
        .run();
    let v: Value = serde_json::from_str(&out.stdout).expect("JSON");
    out.check_eq("accessOnly", &v["accessOnly"], &Value::Bool(false));
    out.check(v["refreshDueAt"].is_i64(), "a refresh time");
}

/// `status`'s refresh time follows the same rule as `--once` and the daemon ("Due, with short
/// grants"): a 10-minute grant this program obtained is due at half its lifetime, not at
/// expiry minus the 15-minute lead (which would read "now"). Found by the hostile review.
#[test]
fn status_shows_a_short_grant_due_at_half_its_lifetime() {
    let login = Login::due();
    let (home, server) = setup(&login);
    server.set_policy(GrantPolicy {
        expires_in: Some(600),
        ..GrantPolicy::default()
    });
    Cmd::new(&home)
        .server(&server)
        .arg("--once")
        .run()
        .expect_code(0);
    let out = Cmd::new(&home)
        .server(&server)
        .args(["status", "--json"])
        .run();
    let v: Value = serde_json::from_str(&out.stdout).expect("JSON");
    let expires = v["expiresAt"].as_i64().expect("expiresAt");
    let due = v["refreshDueAt"].as_i64().expect("refreshDueAt");
    // Half of 600 s before expiry (a little slack for the time the request took).
    out.check(
        (expires - due - 300_000).abs() < 5_000,
        format!("due {} s before expiry, want 300", (expires - due) / 1000),
    );
}

/// Text from the file or a server reaches the terminal escaped: the plan, the rate-limit tier,
/// the scopes and Claude Code's email may carry an escape sequence or a bidirectional override,
/// and `status` shows them as `\u{1b}`, never as bytes the terminal obeys.
#[test]
fn status_escapes_control_characters_and_bidi_overrides_from_the_file() {
    let login = Login::fresh();
    let home = TempHome::new();
    let mut doc = login.doc();
    let o = doc["claudeAiOauth"].as_object_mut().unwrap();
    o.insert("subscriptionType".into(), "max\u{1b}[2J".into());
    o.insert("rateLimitTier".into(), "tier\u{202e}gnp.exe".into());
    o.insert(
        "scopes".into(),
        serde_json::json!(["user:inference", "x\u{1b}]0;pwned\u{7}"]),
    );
    home.write_creds(&doc);
    write_creds_at(
        &home.path().join(".claude.json"),
        &claude_json("ada\u{202e}@example.test"),
    );
    let out = Cmd::new(&home).arg("status").run();
    out.expect_code(0);
    for raw in ['\u{1b}', '\u{7}', '\u{202e}'] {
        out.check(
            !out.stdout.contains(raw),
            format!("stdout carries {raw:?} raw"),
        );
    }
    for shown in [
        r"max\u{1b}[2J",
        r"tier\u{202e}gnp.exe",
        r"x\u{1b}]0;pwned\u{7}",
        r"ada\u{202e}@example.test",
    ] {
        out.check(out.stdout.contains(shown), format!("stdout shows {shown}"));
    }
}

/// After the token endpoint refused the stored refresh token, `status` says the login is lost
/// (as `doctor` does) instead of "Refresh due: now", and `--json` has `refreshRefusedAt`.
#[test]
fn status_says_when_the_stored_refresh_token_was_refused() {
    let login = Login::due();
    let (home, server) = setup(&login);
    let out = Cmd::new(&home).arg("status").run();
    out.expect_code(0).check(
        !out.stdout.contains("refused"),
        "a login nobody refused is not called refused",
    );
    let json: Value =
        serde_json::from_str(&Cmd::new(&home).args(["status", "--json"]).run().stdout)
            .expect("status --json is JSON");
    check_eq(
        "refreshRefusedAt before",
        &json["refreshRefusedAt"],
        &Value::Null,
    );

    server.always(Reply::invalid_grant());
    Cmd::new(&home)
        .server(&server)
        .arg("--once")
        .run()
        .expect_code(77);
    let out = Cmd::new(&home).arg("status").run();
    out.check(
        out.stdout.contains("refused this refresh token") && out.stdout.contains("login"),
        "status says the refresh token was refused and to sign in again",
    )
    .check(!out.stdout.contains("Refresh due:   now"), "not 'due now'");
    let json: Value =
        serde_json::from_str(&Cmd::new(&home).args(["status", "--json"]).run().stdout)
            .expect("status --json is JSON");
    out.check(
        json["refreshRefusedAt"].as_i64().is_some_and(|at| at > 0),
        format!("refreshRefusedAt after: {}", json["refreshRefusedAt"]),
    );
}
