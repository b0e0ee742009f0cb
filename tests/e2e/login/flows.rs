//! Logins made end to end: a first login and one over an existing file, the pasted code (with
//! a wrong state, bare, or as a callback URL) and a long-lived login. The loopback flow is in
//! `loopback`.

use super::*;

#[test]
fn first_login_creates_the_directory_0700_and_the_file_0600() {
    let home = TempHome::new();
    let server = TokenServer::start();
    let mut run = start_login(&home, &server, &[]);
    let (code, state) = authorize(&mut run, &server, CC_SCOPES, MANUAL_REDIRECT);
    run.paste(&format!("{code}#{state}"));
    let out = run.finish();
    out.expect_code(0);
    out.check_eq("requests", server.count(), 1);
    let body = &server.requests()[0].body;
    out.check_eq(
        "grant_type",
        &body["grant_type"],
        &json!("authorization_code"),
    );
    out.check(
        body.get("expires_in").is_none(),
        "a normal login asks for no lifetime",
    );
    out.check_eq("directory mode", mode_of(&home.claude_dir()), 0o700);
    out.check_eq("file mode", home.mode(), 0o600);
    let issued = server.last_issued();
    let doc = home.read_creds();
    out.check_eq(
        "access token saved",
        doc["claudeAiOauth"]["accessToken"].as_str(),
        Some(issued.access.as_str()),
    );
    out.check_eq(
        "refresh token saved",
        doc["claudeAiOauth"]["refreshToken"].as_str(),
        issued.refresh.as_deref(),
    );
    out.check(
        out.stdout
            .contains(&home.creds_path().display().to_string()),
        "says where it saved",
    );
    let mut secrets = vec![issued.access.clone(), code];
    secrets.extend(issued.refresh.clone());
    out.expect_no_secret(&secrets);
}

#[test]
fn login_over_an_existing_file_keeps_every_other_top_level_key() {
    let home = TempHome::new();
    let old = Login::expired();
    let before = old.doc();
    home.write_creds(&before);
    let server = TokenServer::start();
    let mut run = start_login(&home, &server, &[]);
    let (code, state) = authorize(&mut run, &server, CC_SCOPES, MANUAL_REDIRECT);
    run.paste(&format!("  {code}#{state}  "));
    let out = run.finish();
    out.expect_code(0);
    let after = home.read_creds();
    out.check_eq("mcpOAuth kept", &after["mcpOAuth"], &before["mcpOAuth"]);
    let top_level = |doc: &Value| {
        let mut doc = doc.clone();
        doc.as_object_mut().unwrap().remove("claudeAiOauth");
        doc
    };
    out.check_eq("other keys kept", top_level(&after), top_level(&before));
    out.check_eq("key order kept", keys(&after), keys(&before));
    // A new login is a new identity: nothing of the old one survives inside claudeAiOauth.
    let mut inner = keys(&after["claudeAiOauth"]);
    inner.sort();
    out.check_eq(
        "claudeAiOauth holds only the new login's fields",
        inner,
        [
            "accessToken",
            "expiresAt",
            "refreshToken",
            "refreshTokenExpiresAt",
            "scopes",
        ]
        .map(String::from)
        .to_vec(),
    );
}

#[test]
fn a_wrong_pasted_state_sends_nothing_and_changes_nothing() {
    let home = TempHome::new();
    home.write_creds(&Login::expired().doc());
    let before = home.state();
    let server = TokenServer::start();
    let mut run = start_login(&home, &server, &[]);
    let (code, _) = authorize(&mut run, &server, CC_SCOPES, MANUAL_REDIRECT);
    run.paste(&format!("{code}#not-our-state"));
    let out = run.finish();
    out.check(out.code != 0, "refused");
    out.check_eq("requests", server.count(), 0);
    out.expect_untouched(&home.creds_path(), &before);
    out.expect_stderr_contains("state");
}

#[test]
fn a_bare_code_and_a_pasted_callback_url_are_accepted() {
    for style in ["bare", "url"] {
        let home = TempHome::new();
        let server = TokenServer::start();
        let mut run = start_login(&home, &server, &[]);
        let (code, state) = authorize(&mut run, &server, CC_SCOPES, MANUAL_REDIRECT);
        match style {
            "bare" => run.paste(&code),
            _ => run.paste(&format!("{MANUAL_REDIRECT}?code={code}&state={state}")),
        }
        let out = run.finish();
        out.expect_code(0);
        out.check_eq(format!("{style}: requests"), server.count(), 1);
        out.check_eq(
            format!("{style}: the state sent is ours"),
            server.requests()[0].body["state"].as_str(),
            Some(state.as_str()),
        );
    }
}

#[test]
fn long_lived_asks_for_a_year_and_the_narrow_scope() {
    let home = TempHome::new();
    let server = TokenServer::start();
    server.set_policy(GrantPolicy {
        expires_in: None,
        refresh_token_expires_in: None,
        scope: Some("user:inference".into()),
        rotate: false,
    });
    let before_ms = now_ms();
    let mut run = start_login(&home, &server, &["--long-lived"]);
    let (code, state) = authorize(&mut run, &server, "user:inference", MANUAL_REDIRECT);
    run.paste(&format!("{code}#{state}"));
    let out = run.finish();
    out.expect_code(0);
    let body = &server.requests()[0].body;
    out.check_eq("expires_in asked", &body["expires_in"], &json!(31_536_000));
    let doc = home.read_creds();
    let expires_at = doc["claudeAiOauth"]["expiresAt"].as_i64().unwrap();
    // The server grants what was asked here (it echoes expires_in), so a year it is.
    out.check(
        expires_at >= before_ms + 31_536_000_000 && expires_at <= now_ms() + 31_536_000_000,
        format!("expiresAt {expires_at} is a year from the request"),
    );
    out.check(
        doc["claudeAiOauth"].get("refreshToken").is_none(),
        "no refresh token granted, none saved",
    );
    out.check(
        out.stdout.contains("cannot be renewed"),
        "says it cannot be renewed",
    );
}
