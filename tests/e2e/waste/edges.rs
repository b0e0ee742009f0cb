//! "Never waste, never hammer" at the edges, one-shot commands: hostile numbers (expiries at
//! the ends of i64, lifetimes of u64::MAX), client-setting refusals (`invalid_client` and
//! kin) that name the client id, output into a closed pipe, `logout` under Claude Code's
//! `.storage-write.lock`, and `login` replacing `claudeAiOauth` whole.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use claude_tokend_e2e::*;
use serde_json::{Value, json};

use super::*;

// ---------------------------------------------------------------------------------------------
// Hostile numbers

#[test]
fn status_survives_expiries_at_the_ends_of_i64() {
    for expires in [i64::MIN, i64::MAX] {
        for login_end in [i64::MIN, i64::MAX] {
            let home = TempHome::new();
            let mut doc = Login::fresh().doc();
            doc["claudeAiOauth"]["expiresAt"] = json!(expires);
            doc["claudeAiOauth"]["refreshTokenExpiresAt"] = json!(login_end);
            home.write_creds(&doc);
            let want = if expires == i64::MIN { 1 } else { 0 };
            let out = Cmd::new(&home).arg("status").run();
            expect_no_panic(&out);
            out.expect_code(want);
            let out = Cmd::new(&home).args(["status", "--json"]).run();
            expect_no_panic(&out);
            out.expect_code(want).check(
                serde_json::from_str::<Value>(&out.stdout).is_ok(),
                "status --json printed no valid JSON",
            );
        }
    }
}

/// A JSON number as i128 (a saturated value may be stored past i64).
fn number(v: Option<&Value>) -> Option<i128> {
    let v = v?;
    v.as_i64()
        .map(i128::from)
        .or_else(|| v.as_u64().map(i128::from))
}

#[test]
fn once_survives_lifetimes_of_u64_max() {
    let (home, login, _) = setup();
    let server = TokenServer::for_login(&login);
    server.set_policy(GrantPolicy {
        expires_in: Some(u64::MAX),
        refresh_token_expires_in: Some(u64::MAX),
        ..GrantPolicy::default()
    });
    let before = i128::from(now_ms());
    let out = once(&home, &server).run();
    expect_no_panic(&out);
    out.expect_code(0).check_eq("requests", server.count(), 1);
    let after = home.read_creds();
    let o = oauth(&after);
    let expires = number(o.get("expiresAt"));
    out.check(
        expires.is_some_and(|e| e >= before),
        format!(
            "expiresAt {:?} is not a number past now",
            o.get("expiresAt")
        ),
    );
    if let Some(end) = o.get("refreshTokenExpiresAt") {
        out.check(
            number(Some(end)).is_some_and(|e| e >= before),
            format!("refreshTokenExpiresAt {end} is not a number past now"),
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Setting problems

#[test]
fn client_errors_exit_1_and_name_the_client_id_and_its_source() {
    for error in ["invalid_client", "unauthorized_client", "invalid_scope"] {
        for in_file in [true, false] {
            let (home, login, mut doc) = setup();
            if in_file {
                doc["claudeAiOauth"]["clientId"] = json!("file-client-123");
                home.write_creds(&doc);
            }
            let server = TokenServer::for_login(&login);
            server.always(Reply::json(400, &json!({ "error": error })));
            let before = home.state();
            let out = once(&home, &server)
                .args(["--client-id", "setting-client-9"])
                .run();
            out.expect_code(1)
                .check_eq(format!("requests ({error})"), server.count(), 1)
                .expect_untouched(&home.creds_path(), &before);
            if in_file {
                out.expect_stderr_contains("file-client-123")
                    .expect_stderr_contains("clientId")
                    .check_eq(
                        "client_id sent",
                        server.requests()[0].body["client_id"].as_str(),
                        Some("file-client-123"),
                    );
            } else {
                out.expect_stderr_contains("setting-client-9").check(
                    out.stderr.contains("--client-id")
                        || out.stderr.contains("ANTHROPIC_CLIENT_ID"),
                    "stderr should say the client id came from --client-id",
                );
            }
        }
    }
    let (home, _, mut doc) = setup();
    doc["claudeAiOauth"]["clientId"] = json!("file-client-123");
    home.write_creds(&doc);
    let server = TokenServer::start();
    let out = once(&home, &server).run();
    out.expect_code(77).check_eq("requests", server.count(), 1);
}

// ---------------------------------------------------------------------------------------------
// A closed stdout

#[test]
fn status_into_a_closed_pipe_ends_quietly() {
    let home = TempHome::new();
    home.write_creds(&Login::fresh().doc());
    for args in [&["status"][..], &["status", "--json"]] {
        let (reader, writer) = std::io::pipe().expect("a pipe");
        drop(reader);
        let out = Command::new(bin())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", home.path())
            .args(args)
            .stdin(Stdio::null())
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .expect("running status");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !stderr.contains("panicked"),
            "{args:?} into a closed pipe panicked:\n{stderr}"
        );
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?} into a closed pipe ({:?}):\n{stderr}",
            out.status
        );
    }
}

// ---------------------------------------------------------------------------------------------
// logout and login under Claude Code's storage-write lock

#[test]
fn logout_waits_for_claude_codes_storage_write_lock() {
    let login = Login::fresh();
    let only_login = json!({"claudeAiOauth": {"accessToken": login.access,
        "refreshToken": login.refresh, "expiresAt": login.expires_at}});
    for doc in [only_login, login.doc()] {
        let home = TempHome::new();
        home.write_creds(&doc);
        let lock = LiveLock::hold_every(&write_lock(&home), Duration::from_millis(500));
        let start = Instant::now();
        let running = Cmd::new(&home).args(["logout", "--yes"]).spawn();
        std::thread::sleep(Duration::from_secs(1));
        assert!(
            try_doc(&home).is_some_and(|d| d.get("claudeAiOauth").is_some()),
            "logout changed the file while .storage-write.lock was held"
        );
        std::thread::sleep(Duration::from_secs(2).saturating_sub(start.elapsed()));
        lock.release();
        let out = running.wait();
        out.expect_code(0);
        let mut want = doc.clone();
        want.as_object_mut().unwrap().remove("claudeAiOauth");
        if want.as_object().unwrap().is_empty() {
            out.check(!home.creds_path().exists(), "the emptied file is deleted");
        } else {
            out.check_eq("after logout", home.read_creds(), want);
        }
    }
}

/// Drives `login` (paste flow) to the end against `server`, the profile lookup pointed at it.
fn login_against(home: &TempHome, server: &TokenServer) -> Out {
    let mut child = Command::new(bin())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home.path())
        .env("CLAUDE_TOKEND_TOKEN_URL", server.url())
        .env("CLAUDE_TOKEND_API_URL", server.base())
        .args(["login", "--no-browser"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start login");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut url = String::new();
    stdout.read_line(&mut url).expect("the authorize URL");
    let param = |k: &str| {
        url.trim()
            .split(['?', '&'])
            .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
            .map(percent_decode)
            .unwrap_or_else(|| panic!("no {k} in {url}"))
    };
    let code = format!("code-{}", random_alnum(24));
    server.allow_code(AuthCode {
        code: code.clone(),
        challenge: param("code_challenge"),
        state: param("state"),
        redirect_uri: param("redirect_uri"),
        client_id: param("client_id"),
    });
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "{code}#{}", param("state")).expect("paste");
    drop(stdin);
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let status = child.wait().unwrap();
    Out {
        code: status.code().unwrap_or(-1),
        stdout: url + &rest,
        stderr,
        cmd: "claude-tokend login --no-browser".into(),
        elapsed: Duration::ZERO,
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let (mut out, mut i) = (Vec::new(), 0);
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            out.push(
                u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap(), 16).unwrap(),
            );
            i += 3;
        } else {
            out.push(if b[i] == b'+' { b' ' } else { b[i] });
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

#[test]
fn login_replaces_claude_ai_oauth_whole() {
    let home = TempHome::new();
    let mut before = Login::expired().doc();
    let o = before["claudeAiOauth"].as_object_mut().unwrap();
    o.insert("clientId".into(), json!("old-client"));
    o.insert("subscriptionType".into(), json!("max"));
    o.insert(
        "tokenAccount".into(),
        json!({"uuid": "old-account", "emailAddress": "old@example.test"}),
    );
    home.write_creds(&before);
    let server = TokenServer::start();
    let out = login_against(&home, &server);
    out.expect_code(0);
    let after = home.read_creds();
    let o = oauth(&after);
    for gone in [
        "clientId",
        "subscriptionType",
        "tokenAccount",
        "unknownOauthField",
    ] {
        out.check(
            !o.contains_key(gone),
            format!("the old login's {gone} survived a new login: {o:?}"),
        );
    }
    out.check_eq(
        "accessToken",
        o.get("accessToken"),
        Some(&json!(server.last_issued().access)),
    )
    .check_eq("mcpOAuth", &after["mcpOAuth"], &before["mcpOAuth"])
    .check_eq(
        "unknownTopLevel",
        &after["unknownTopLevel"],
        &before["unknownTopLevel"],
    );
}
