//! The refresh itself: when a request is sent, what it carries, and what is written back.

use std::time::Duration;

use claude_tokend_e2e::*;
use serde_json::{Value, json};

const HOUR_MS: i64 = 3600 * 1000;

/// A HOME with a typical document holding a due login, and a server that accepts it.
struct Setup {
    home: TempHome,
    login: Login,
    doc: Value,
    server: TokenServer,
}

fn setup(login: Login) -> Setup {
    let home = TempHome::new();
    let doc = login.doc();
    home.write_creds(&doc);
    let server = TokenServer::for_login(&login);
    Setup {
        home,
        login,
        doc,
        server,
    }
}

/// `value` lies in `[lo, hi]`.
#[track_caller]
fn check_between(out: &Out, what: &str, value: i64, lo: i64, hi: i64) {
    out.check(
        lo <= value && value <= hi,
        format!(
            "{what} = {value} should lie in [{lo}, {hi}] (off by {} / {} ms)",
            value - lo,
            value - hi
        ),
    );
}

/// Everything that is not an owned field is as it was, in the same order; new keys appear only
/// for owned fields.
#[track_caller]
fn check_rest_kept(out: &Out, before: &Value, after: &Value) {
    out.check_eq(
        "every key the program does not own is unchanged",
        without_owned(after),
        without_owned(before),
    );
    out.check_eq("top-level key order", keys(after), keys(before));
    let old_keys = keys(&before["claudeAiOauth"]);
    let new_keys = keys(&after["claudeAiOauth"]);
    let kept: Vec<&String> = new_keys.iter().filter(|k| old_keys.contains(k)).collect();
    let old: Vec<&String> = old_keys.iter().collect();
    out.check_eq("claudeAiOauth key order", kept, old);
    for k in new_keys.iter().filter(|k| !old_keys.contains(k)) {
        out.check(
            OWNED.contains(&k.as_str()),
            format!("the program added `{k}`, which it does not own"),
        );
    }
}

#[test]
fn fresh_token_sends_nothing_and_leaves_the_file_untouched() {
    let s = setup(Login::fresh());
    let before = s.home.state();
    let out = Cmd::new(&s.home).server(&s.server).arg("--once").run();
    out.expect_code(0)
        .expect_silent()
        .check_eq("requests sent", s.server.count(), 0)
        .expect_untouched(&s.home.creds_path(), &before);
}

#[test]
fn due_token_is_refreshed_once_with_the_contract_body_and_everything_else_kept() {
    let s = setup(Login::due());
    let started = now_ms();
    let out = Cmd::new(&s.home).server(&s.server).arg("--once").run();
    out.expect_code(0).expect_silent();

    let reqs = s.server.requests();
    out.check_eq("requests sent", reqs.len(), 1);
    let r = &reqs[0];
    out.check_eq("method", r.method.as_str(), "POST");
    out.check_eq("path", r.path.as_str(), TOKEN_PATH);
    out.check_eq(
        "request body",
        &r.body,
        &json!({
            "grant_type": "refresh_token",
            "refresh_token": s.login.refresh,
            "client_id": DEFAULT_CLIENT_ID,
            "scope": SCOPES.join(" "),
        }),
    );
    let content_type = r.header("content-type").unwrap_or_default();
    out.check_eq(
        "content-type",
        content_type.split(';').next().unwrap_or_default().trim(),
        "application/json",
    );
    out.check_eq(
        "user-agent",
        r.header("user-agent"),
        Some(default_user_agent().as_str()),
    );

    let issued = s.server.last_issued();
    let doc = s.home.read_creds();
    let o = oauth(&doc);
    out.check_eq(
        "accessToken",
        o.get("accessToken"),
        Some(&json!(issued.access)),
    );
    out.check_eq(
        "refreshToken",
        o.get("refreshToken"),
        Some(&json!(issued.refresh.expect("rotated"))),
    );
    let expires_at = o["expiresAt"].as_i64().expect("expiresAt is an integer");
    check_between(
        &out,
        "expiresAt",
        expires_at,
        started + 8 * HOUR_MS,
        r.received_ms + 8 * HOUR_MS,
    );
    let rt_expires_at = o
        .get("refreshTokenExpiresAt")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    check_between(
        &out,
        "refreshTokenExpiresAt",
        rt_expires_at,
        started + 30 * 24 * HOUR_MS,
        r.received_ms + 30 * 24 * HOUR_MS,
    );
    out.check_eq(
        "scopes (from the answer's scope)",
        o.get("scopes"),
        Some(&json!([
            "user:inference",
            "user:profile",
            "user:sessions:claude_code",
            "user:mcp"
        ])),
    );
    check_rest_kept(&out, &s.doc, &doc);
    out.check_eq("file mode", s.home.mode(), 0o600);
    out.expect_only_files(&s.home.claude_dir(), &allowed_siblings(".credentials.json"));
    out.check_eq(
        "HOME holds nothing new (lock directories removed)",
        list_names(s.home.path()),
        vec![".claude".to_owned()],
    );
}

#[test]
fn expired_token_is_refreshed() {
    let s = setup(Login::expired());
    let out = Cmd::new(&s.home).server(&s.server).arg("--once").run();
    out.expect_code(0)
        .expect_silent()
        .check_eq("requests sent", s.server.count(), 1);
    let doc = s.home.read_creds();
    out.check_eq(
        "accessToken",
        oauth(&doc).get("accessToken"),
        Some(&json!(s.server.last_issued().access)),
    );
}

#[test]
fn user_agent_can_be_set_by_flag_and_by_env() {
    let ua = "claude-cli/2.1.332 (external, cli)";
    for by_flag in [true, false] {
        let s = setup(Login::due());
        let cmd = Cmd::new(&s.home).server(&s.server).arg("--once");
        let cmd = if by_flag {
            cmd.args(["--user-agent", ua])
        } else {
            cmd.env("CLAUDE_TOKEND_USER_AGENT", ua)
        };
        let out = cmd.run();
        out.expect_code(0)
            .check_eq("requests sent", s.server.count(), 1);
        out.check_eq(
            "user-agent",
            s.server.requests()[0].header("user-agent"),
            Some(ua),
        );
    }
}

#[test]
fn client_id_in_the_file_wins_over_the_setting() {
    let login = Login::due();
    let file_client = format!("file-client-{}", random_alnum(8));
    let mut doc = login.doc();
    doc["claudeAiOauth"]["clientId"] = json!(file_client);
    for setting in [None, Some("flag"), Some("env")] {
        let home = TempHome::new();
        home.write_creds(&doc);
        let server = TokenServer::for_login(&login);
        let mut cmd = Cmd::new(&home).server(&server).arg("--once");
        match setting {
            Some("flag") => cmd = cmd.args(["--client-id", "setting-client"]),
            Some(_) => cmd = cmd.env("ANTHROPIC_CLIENT_ID", "setting-client"),
            None => {}
        }
        let out = cmd.run();
        out.expect_code(0)
            .check_eq("requests sent", server.count(), 1);
        out.check_eq(
            "client_id sent",
            server.requests()[0].body.get("client_id"),
            Some(&json!(file_client)),
        );
        out.check_eq(
            "clientId kept in the file",
            oauth(&home.read_creds()).get("clientId"),
            Some(&json!(file_client)),
        );
    }
}

#[test]
fn client_id_setting_is_used_when_the_file_names_none() {
    for by_flag in [true, false] {
        let s = setup(Login::due());
        let cmd = Cmd::new(&s.home).server(&s.server).arg("--once");
        let cmd = if by_flag {
            cmd.args(["--client-id", "my-own-client"])
        } else {
            cmd.env("ANTHROPIC_CLIENT_ID", "my-own-client")
        };
        let out = cmd.run();
        out.expect_code(0)
            .check_eq("requests sent", s.server.count(), 1);
        out.check_eq(
            "client_id sent",
            s.server.requests()[0].body.get("client_id"),
            Some(&json!("my-own-client")),
        );
    }
}

#[test]
fn file_without_scopes_sends_no_scope() {
    let login = Login::due();
    let home = TempHome::new();
    let mut doc = login.doc();
    doc["claudeAiOauth"]
        .as_object_mut()
        .expect("object")
        .remove("scopes");
    home.write_creds(&doc);
    let server = TokenServer::for_login(&login);
    let out = Cmd::new(&home).server(&server).arg("--once").run();
    out.expect_code(0)
        .check_eq("requests sent", server.count(), 1);
    out.check_eq(
        "request body",
        &server.requests()[0].body,
        &json!({
            "grant_type": "refresh_token",
            "refresh_token": login.refresh,
            "client_id": DEFAULT_CLIENT_ID,
        }),
    );
}

#[test]
fn sparse_answer_keeps_the_refresh_token_and_scopes_and_defaults_expiry_to_an_hour() {
    let s = setup(Login::due());
    s.server.set_policy(GrantPolicy {
        expires_in: None,
        refresh_token_expires_in: None,
        scope: None,
        rotate: false,
    });
    let started = now_ms();
    let out = Cmd::new(&s.home).server(&s.server).arg("--once").run();
    out.expect_code(0)
        .expect_silent()
        .check_eq("requests sent", s.server.count(), 1);
    let r = &s.server.requests()[0];
    let doc = s.home.read_creds();
    let o = oauth(&doc);
    out.check_eq(
        "accessToken",
        o.get("accessToken"),
        Some(&json!(s.server.last_issued().access)),
    );
    out.check_eq(
        "refreshToken (none in the answer: the old one is kept)",
        o.get("refreshToken"),
        Some(&json!(s.login.refresh)),
    );
    check_between(
        &out,
        "expiresAt (no expires_in: 3600 s)",
        o["expiresAt"].as_i64().expect("integer"),
        started + HOUR_MS,
        r.received_ms + HOUR_MS,
    );
    out.check_eq(
        "refreshTokenExpiresAt (not in the answer: not written)",
        o.get("refreshTokenExpiresAt"),
        None,
    );
    out.check_eq(
        "scopes (no scope in the answer)",
        o.get("scopes"),
        Some(&json!(SCOPES)),
    );
    check_rest_kept(&out, &s.doc, &doc);
}

#[test]
fn expires_at_counts_from_when_the_request_was_sent() {
    // The answer comes 1.5 s after the request arrives: an expiry counted from the answer would
    // be later than the server meant.
    let s = setup(Login::due());
    s.server.set_delay(Duration::from_millis(1500));
    let started = now_ms();
    let out = Cmd::new(&s.home).server(&s.server).arg("--once").run();
    out.expect_code(0)
        .check_eq("requests sent", s.server.count(), 1);
    let r = &s.server.requests()[0];
    let o = oauth(&s.home.read_creds()).clone();
    check_between(
        &out,
        "expiresAt",
        o["expiresAt"].as_i64().expect("integer"),
        started + 8 * HOUR_MS,
        r.received_ms + 8 * HOUR_MS,
    );
    check_between(
        &out,
        "refreshTokenExpiresAt",
        o["refreshTokenExpiresAt"].as_i64().expect("integer"),
        started + 30 * 24 * HOUR_MS,
        r.received_ms + 30 * 24 * HOUR_MS,
    );
}

#[test]
fn refresh_command_refreshes_a_token_that_is_not_due() {
    let s = setup(Login::fresh());
    let out = Cmd::new(&s.home).server(&s.server).arg("refresh").run();
    out.expect_code(0)
        .check_eq("requests sent", s.server.count(), 1);
    out.check_eq(
        "refresh token sent",
        s.server.requests()[0].refresh_token(),
        Some(s.login.refresh.as_str()),
    );
    let issued = s.server.last_issued();
    let doc = s.home.read_creds();
    out.check_eq(
        "accessToken",
        oauth(&doc).get("accessToken"),
        Some(&json!(issued.access)),
    );
    let mut secrets = s.login.secrets();
    secrets.push(issued.access.clone());
    secrets.extend(issued.refresh.clone());
    out.expect_no_secret(&secrets);
    check_rest_kept(&out, &s.doc, &doc);
    out.expect_only_files(&s.home.claude_dir(), &allowed_siblings(".credentials.json"));
}

#[test]
fn refresh_before_decides_what_is_due() {
    // Expires in 10 minutes: due under the default 15m lead, not under 5m; and a token with 30
    // minutes left is due under a 1h lead.
    let cases = [
        (600, None, 1usize),
        (600i64, Some(("flag", "5m")), 0),
        (600, Some(("env", "5m")), 0),
        (1800, Some(("flag", "1h")), 1),
        (1800, Some(("env", "1h")), 1),
    ];
    for (secs, setting, want) in cases {
        let s = setup(Login::expiring_in(secs));
        let before = s.home.state();
        let mut cmd = Cmd::new(&s.home).server(&s.server).arg("--once");
        match setting {
            Some(("flag", v)) => cmd = cmd.args(["--refresh-before", v]),
            Some((_, v)) => cmd = cmd.env("CLAUDE_TOKEND_REFRESH_BEFORE", v),
            None => {}
        }
        let out = cmd.run();
        out.expect_code(0).expect_silent().check_eq(
            format!("requests sent (expires in {secs}s, lead {setting:?})"),
            s.server.count(),
            want,
        );
        if want == 0 {
            out.expect_untouched(&s.home.creds_path(), &before);
        }
    }
}
