//! `--once` on the Keychain item: the refresh and its write (`security -i`, hex, no secret in
//! argv; argv when the line would pass 4032 bytes), a fresh item left alone, eight at once,
//! hex output read back, a missing or malformed item, compare-and-swap, and a write that fails.

use std::time::Duration;

use claude_tokend_e2e::keychain::*;
use claude_tokend_e2e::*;
use serde_json::{Value, json};

use super::*;

#[test]
fn once_refreshes_a_due_item_through_stdin_in_hex_keeping_everything_else() {
    // By flag and by CLAUDE_TOKEND_STORE.
    for by_env in [false, true] {
        let login = Login::due();
        let doc = item_doc(&login);
        let s = Setup::with(&doc);
        let server = TokenServer::for_login(&login);
        let cmd = if by_env {
            s.kc.apply(Cmd::new(&s.home).server(&server))
                .env("CLAUDE_TOKEND_STORE", "keychain")
                .arg("--once")
        } else {
            s.once(&server)
        };
        let out = cmd.run();
        out.expect_code(0)
            .expect_silent()
            .check_eq("requests", server.count(), 1)
            .check_eq(
                "the request body",
                &server.requests()[0].body,
                &json!({
                    "grant_type": "refresh_token",
                    "refresh_token": login.refresh,
                    "client_id": DEFAULT_CLIENT_ID,
                    "scope": SCOPES.join(" "),
                }),
            );
        check_refreshed(&out, &s, &server, &doc);
        out.check_eq(
            "organizationUuid",
            &s.item()["organizationUuid"],
            &doc["organizationUuid"],
        );
        expect_one_write_of_the_item(&out, &s, true);
        let issued = server.last_issued();
        let mut secrets = login.secrets();
        secrets.push(issued.access.clone());
        secrets.extend(issued.refresh.clone());
        expect_no_secret_in_argv(&out, &s.kc, &secrets);
        for line in s.kc.stdin_lines() {
            for t in &secrets {
                out.check(
                    !line.contains(t.as_str()),
                    "a whole token in plain text on security's stdin (the value goes as hex)",
                );
            }
        }
        out.check(
            s.kc.argv_calls().iter().any(|a| {
                a.first().is_some_and(|c| c == "find-generic-password") && a.contains(&"-w".into())
            }),
            "the item is read with find-generic-password ... -w",
        );
        expect_no_file_and_no_lock_dirs(&out, &s.home);
    }
}

#[test]
fn once_on_a_fresh_item_sends_nothing_writes_nothing_and_prints_nothing() {
    let login = Login::fresh();
    let s = Setup::with(&item_doc(&login));
    let server = TokenServer::for_login(&login);
    let (bytes, mtime) = (s.kc.db_bytes(), s.kc.db_mtime());
    let out = s.once(&server).run();
    out.expect_code(0)
        .expect_silent()
        .check_eq("requests", server.count(), 0)
        .check_eq("writes", s.kc.writes(), Vec::<Vec<String>>::new())
        .check_eq("the keychain's bytes", s.kc.db_bytes(), bytes)
        .check_eq("the keychain's mtime", s.kc.db_mtime(), mtime)
        .check(s.kc.invocations() >= 1, "security was never run");
    out.check(
        !s.home.creds_path().exists(),
        "a credentials file was created",
    );
}

#[test]
fn eight_concurrent_once_runs_send_one_request() {
    let login = Login::due();
    let doc = item_doc(&login);
    let s = Setup::with(&doc);
    let server = TokenServer::for_login(&login);
    server.set_delay(Duration::from_millis(300));
    let runs: Vec<Running> = (0..8).map(|_| s.once(&server).spawn()).collect();
    let outs: Vec<Out> = runs.into_iter().map(Running::wait).collect();
    for out in &outs {
        out.expect_code(0).expect_silent();
    }
    let out = &outs[0];
    out.check_eq("requests", server.count(), 1);
    check_refreshed(out, &s, &server, &doc);
    expect_one_write_of_the_item(out, &s, true);
    expect_no_file_and_no_lock_dirs(out, &s.home);
}

#[test]
fn an_item_security_prints_as_hex_is_read() {
    // Pretty JSON (newlines) and a non-ASCII name: `security -w` prints the value's hex.
    let login = Login::due();
    let mut doc = item_doc(&login);
    doc["claudeAiOauth"]["organizationName"] = json!("Zoë's Café");
    let s = Setup::empty();
    let pretty = serde_json::to_string_pretty(&doc).unwrap();
    s.kc.put_raw(&s.service, &s.account, pretty.as_bytes());
    let server = TokenServer::for_login(&login);
    let out = s.once(&server).run();
    out.expect_code(0)
        .expect_silent()
        .check_eq("requests", server.count(), 1)
        .check_eq(
            "the refresh token sent (read from hex)",
            server.requests()[0].refresh_token(),
            Some(login.refresh.as_str()),
        );
    check_refreshed(&out, &s, &server, &doc);
    out.check_eq(
        "the non-ASCII name",
        &s.item()["claudeAiOauth"]["organizationName"],
        &json!("Zoë's Café"),
    );
    expect_one_write_of_the_item(&out, &s, true);
}

/// A typical item padded with an MCP entry of `pad` bytes.
fn padded(login: &Login, pad: usize) -> Value {
    let mut doc = item_doc(login);
    doc["mcpOAuth"]["big|0000000000"] = json!({"serverName": "big", "blob": "m".repeat(pad)});
    doc
}

/// The value the program will write for `doc` after a refresh by the default server: the same
/// lengths (tokens, 13-digit times, the server's scopes), so the same size.
fn predicted(doc: &Value) -> Vec<u8> {
    let mut d = doc.clone();
    let o = d["claudeAiOauth"].as_object_mut().unwrap();
    o.insert("accessToken".into(), json!(fake_access()));
    o.insert("refreshToken".into(), json!(fake_refresh()));
    o.insert("expiresAt".into(), json!(now_ms() + 8 * 3_600_000));
    o.insert(
        "refreshTokenExpiresAt".into(),
        json!(now_ms() + 30 * 86_400_000),
    );
    o.insert(
        "scopes".into(),
        json!(
            GrantPolicy::default()
                .scope
                .unwrap()
                .split(' ')
                .collect::<Vec<_>>()
        ),
    );
    serde_json::to_vec(&d).unwrap()
}

/// Pads a due login's item so that the contract's `-i` line for the refreshed value is
/// `target` bytes long (or one more).
fn item_with_line_of(s: &Setup, login: &Login, target: usize) -> Value {
    let mut pad = 0;
    loop {
        let doc = padded(login, pad);
        let len = stdin_line(&s.service, &s.account, &predicted(&doc)).len();
        if len >= target {
            assert!(len <= target + 1, "calibration overshot: {len}");
            return doc;
        }
        pad += (target - len).div_ceil(2).max(1);
    }
}

#[test]
fn a_6_kb_item_is_written_as_argv_and_stored_exactly() {
    let login = Login::due();
    let doc = padded(&login, 6000);
    let s = Setup::with(&doc);
    let server = TokenServer::for_login(&login);
    let out = s.once(&server).run();
    out.expect_code(0)
        .expect_silent()
        .check_eq("requests", server.count(), 1);
    check_refreshed(&out, &s, &server, &doc);
    let stored = s.raw().unwrap();
    out.check(
        stored.len() > 6000,
        format!("the item is {} bytes", stored.len()),
    );
    expect_one_write_of_the_item(&out, &s, false);
    for line in s.kc.stdin_lines() {
        out.check(
            line.len() < SECURITY_LINE_BUFFER,
            format!("a stdin line of {} bytes was cut by security", line.len()),
        );
    }
}

/// The contract's limit: a line of at most 4032 bytes goes on stdin, a longer one as argv. The
/// item is padded so the line lands just under or just over; whether "at most 4032" counts the
/// newline is left open (4031 and below: stdin under either reading; 4033 and above: argv).
#[test]
fn the_stdin_line_is_at_most_4032_bytes_and_longer_goes_as_argv() {
    for (target, via_stdin) in [(4030, true), (4034, false)] {
        let login = Login::due();
        let s = Setup::empty();
        let doc = item_with_line_of(&s, &login, target);
        s.put(&doc);
        let server = TokenServer::for_login(&login);
        let out = s.once(&server).run();
        out.expect_code(0).check_eq("requests", server.count(), 1);
        check_refreshed(&out, &s, &server, &doc);
        let line = stdin_line(&s.service, &s.account, &s.raw().unwrap()).len();
        out.check(
            line.abs_diff(target) <= 1,
            format!("the refreshed item's line is {line} bytes, not about {target}: recalibrate"),
        );
        expect_one_write_of_the_item(&out, &s, via_stdin);
    }
}

#[test]
fn a_missing_item_exits_78_naming_service_and_account() {
    let s = Setup::empty();
    let server = TokenServer::start();
    let out = s.once(&server).run();
    out.expect_code(78)
        .expect_stderr_contains(SERVICE)
        .expect_stderr_contains(TEST_USER)
        .check_eq("requests", server.count(), 0)
        .check_eq("writes", s.kc.writes(), Vec::<Vec<String>>::new())
        .check_eq("items", s.kc.item_names(), Vec::new());
    out.check(
        !s.home.creds_path().exists(),
        "a credentials file was created",
    );
}

#[test]
fn a_malformed_item_exits_78_and_is_never_rewritten() {
    for bytes in [&b"{\"claudeAiOauth\": "[..], b"not json at all", b"[1, 2]"] {
        let s = Setup::empty();
        s.kc.put_raw(&s.service, &s.account, bytes);
        let before = s.kc.db_bytes();
        let server = TokenServer::start();
        let out = s.once(&server).run();
        out.expect_code(78)
            .expect_stderr_contains(SERVICE)
            .expect_stderr_contains(TEST_USER)
            .check_eq("requests", server.count(), 0)
            .check_eq("writes", s.kc.writes(), Vec::<Vec<String>>::new())
            .check_eq("the keychain", s.kc.db_bytes(), before);
    }
}

/// `--once` on a due item with a 1.5 s answer; `meanwhile` changes the keychain while the
/// request is in flight.
fn cas(meanwhile: impl FnOnce(&Setup)) -> (Setup, TokenServer, Out) {
    let login = Login::due();
    let s = Setup::with(&item_doc(&login));
    let server = TokenServer::for_login(&login);
    server.set_delay(Duration::from_millis(1500));
    let running = s.once(&server).spawn();
    await_requests(&server, 1);
    meanwhile(&s);
    let out = running.wait();
    out.check_eq("requests", server.count(), 1);
    (s, server, out)
}

#[test]
fn cas_another_writer_replacing_the_item_meanwhile_wins() {
    let mut theirs = Vec::new();
    let (s, _, out) = cas(|s| {
        let other = Login::fresh();
        let mut doc = s.item();
        doc["claudeAiOauth"]["accessToken"] = json!(other.access);
        doc["claudeAiOauth"]["refreshToken"] = json!(other.refresh);
        doc["claudeAiOauth"]["expiresAt"] = json!(other.expires_at);
        s.put(&doc);
        theirs = s.raw().unwrap();
    });
    out.expect_code(0)
        .check_eq(
            "the item is the other writer's",
            String::from_utf8_lossy(&s.raw().unwrap()).into_owned(),
            String::from_utf8_lossy(&theirs).into_owned(),
        )
        .check_eq("our writes", s.kc.writes(), Vec::<Vec<String>>::new());
}

#[test]
fn cas_an_item_deleted_meanwhile_is_not_recreated() {
    let (s, _, out) = cas(|s| {
        assert!(s.kc.delete(&s.service, &s.account));
    });
    out.expect_code(77)
        .check_eq("the item", s.raw(), None)
        .check_eq("our writes", s.kc.writes(), Vec::<Vec<String>>::new());
}

#[test]
fn cas_an_mcp_change_meanwhile_is_kept_with_the_new_tokens() {
    let mut changed = Value::Null;
    let (s, server, out) = cas(|s| {
        let mut doc = s.item();
        doc["mcpOAuth"]["github|5f1c9a3e2b"]["accessToken"] = json!("mcp-access-rotated");
        s.put(&doc);
        changed = doc;
    });
    out.expect_code(0);
    check_refreshed(&out, &s, &server, &changed);
}

#[test]
fn a_write_that_fails_keeps_the_grant_and_saves_it_when_it_can() {
    let login = Login::due();
    let doc = item_doc(&login);
    let s = Setup::with(&doc);
    let server = TokenServer::for_login(&login);
    server.set_delay(Duration::from_millis(500));
    let running = s.once(&server).args(["--retry-budget", "30s"]).spawn();
    await_requests(&server, 1);
    s.kc.fail_writes(true);
    std::thread::sleep(Duration::from_secs(3));
    s.kc.fail_writes(false);
    let out = running.wait();
    out.expect_code(0)
        .check_eq(
            "requests (the spent token is never sent again)",
            server.count(),
            1,
        )
        .check(
            s.kc.results().contains(&1),
            "no write failed: the test did not test anything",
        );
    check_refreshed(&out, &s, &server, &doc);
}
