//! A login Claude Code treats as its own: Claude Code's authorize page and scopes, the profile
//! lookup after the exchange (`GET <api base>/api/oauth/profile`), the plan it stores
//! (`subscriptionType`, `rateLimitTier`), the email it prints, and the `--api-url` setting.
//! The suite's server plays both the token endpoint and the API base.

use claude_tokend_e2e::*;
use serde_json::{Value, json};

use crate::login::{CC_SCOPES, MANUAL_REDIRECT, authorize, start_login};

/// A paste-flow login with `args`, driven to the end; it must ask for `scope`.
fn login_with(home: &TempHome, server: &TokenServer, args: &[&str], scope: &str) -> Out {
    let mut run = start_login(home, server, args);
    let (code, state) = authorize(&mut run, server, scope, MANUAL_REDIRECT);
    run.paste(&format!("{code}#{state}"));
    run.finish()
}

/// The plan keys of the saved login.
fn plan(home: &TempHome) -> (Option<Value>, Option<Value>) {
    let doc = home.read_creds();
    let o = oauth(&doc);
    (
        o.get("subscriptionType").cloned(),
        o.get("rateLimitTier").cloned(),
    )
}

/// Every token the server handed out: none may appear whole in any output.
fn issued_secrets(server: &TokenServer) -> Vec<String> {
    server
        .issued()
        .into_iter()
        .flat_map(|i| std::iter::once(i.access).chain(i.refresh))
        .collect()
}

#[test]
fn login_asks_at_claude_codes_authorize_page_for_its_scopes_and_an_explicit_scope_wins() {
    // `authorize` checks the page (https://claude.com/cai/oauth/authorize) and the scope.
    let home = TempHome::new();
    let server = TokenServer::start();
    login_with(&home, &server, &[], CC_SCOPES).expect_code(0);

    let home = TempHome::new();
    let server = TokenServer::start();
    login_with(
        &home,
        &server,
        &["--scope", "user:inference user:profile"],
        "user:inference user:profile",
    )
    .expect_code(0);
}

#[test]
fn the_profile_is_read_with_the_new_access_token_and_the_plan_is_stored() {
    let home = TempHome::new();
    let server = TokenServer::start();
    server.set_profile(Reply::profile(
        "ada@example.test",
        "claude_max",
        "default_claude_max_20x",
    ));
    let out = login_with(&home, &server, &[], CC_SCOPES);
    out.expect_code(0);
    let issued = server.last_issued();
    let lookups = server.profile_requests();
    out.check_eq("profile lookups", lookups.len(), 1);
    let r = &lookups[0];
    out.check_eq("method", r.method.as_str(), "GET")
        .check_eq("path", r.path.as_str(), PROFILE_PATH)
        .check_eq(
            "Authorization",
            r.header("authorization").map(str::to_owned),
            Some(format!("Bearer {}", issued.access)),
        )
        .check_eq(
            "anthropic-beta",
            r.header("anthropic-beta"),
            Some("oauth-2025-04-20"),
        )
        .check_eq(
            "User-Agent",
            r.header("user-agent").map(str::to_owned),
            Some(default_user_agent()),
        )
        .check(
            r.received_ms >= server.requests()[0].received_ms,
            "the lookup comes after the exchange",
        );
    out.check_eq(
        "plan stored",
        plan(&home),
        (Some(json!("max")), Some(json!("default_claude_max_20x"))),
    )
    .check_eq(
        "the tokens stored are the ones the lookup used",
        home.read_creds()["claudeAiOauth"]["accessToken"].as_str(),
        Some(issued.access.as_str()),
    )
    .check(
        out.stdout.contains("ada@example.test"),
        "login prints the account's email",
    )
    .check(!out.stderr.contains("warning"), "no warning on success")
    .expect_no_secret(&issued_secrets(&server))
    .expect_masked(&issued.access);
}

#[test]
fn organization_types_map_to_claude_codes_plan_names() {
    let cases = [
        ("claude_pro", Some("pro")),
        ("claude_team", Some("team")),
        ("claude_enterprise", Some("enterprise")),
        ("claude_something_new", None),
    ];
    for (org, want) in cases {
        let home = TempHome::new();
        let server = TokenServer::start();
        server.set_profile(Reply::profile("ada@example.test", org, "default_claude_ai"));
        let out = login_with(&home, &server, &[], CC_SCOPES);
        out.expect_code(0).check_eq(
            format!("plan for {org}"),
            plan(&home),
            (want.map(|w| json!(w)), Some(json!("default_claude_ai"))),
        );
    }
}

#[test]
fn the_email_is_printed_from_either_key_and_a_profile_without_one_is_fine() {
    let cases = [
        (
            json!({"email_address": "bo@example.test"}),
            Some("bo@example.test"),
        ),
        (json!({"email": "cy@example.test"}), Some("cy@example.test")),
        (json!({"uuid": "no-email-here"}), None),
    ];
    for (account, email) in cases {
        let home = TempHome::new();
        let server = TokenServer::start();
        server.set_profile(Reply::json(
            200,
            &json!({"account": account,
                    "organization": {"organization_type": "claude_pro", "rate_limit_tier": "t1"}}),
        ));
        let out = login_with(&home, &server, &[], CC_SCOPES);
        out.expect_code(0)
            .check_eq(
                format!("plan with account {account}"),
                plan(&home),
                (Some(json!("pro")), Some(json!("t1"))),
            )
            .check(!out.stderr.contains("warning"), "no warning");
        if let Some(e) = email {
            out.check(out.stdout.contains(e), format!("prints {e}"));
        } else {
            out.check(
                !out.stdout.contains('@'),
                "prints no email it was not given",
            );
        }
    }
}

#[test]
fn a_failed_profile_lookup_warns_and_the_login_still_succeeds_without_the_plan() {
    // A port nobody listens on: the lookup cannot connect.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_base = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let cases: Vec<(&str, Option<Reply>)> = vec![
        ("HTTP 500", Some(Reply::error(500))),
        (
            "HTTP 401",
            Some(Reply::json(
                401,
                &json!({"type": "error", "error": {"type": "authentication_error"}}),
            )),
        ),
        ("a body that is not JSON", Some(Reply::raw(200, "<html>"))),
        (
            "JSON that is not an object",
            Some(Reply::json(200, &json!(["account"]))),
        ),
        ("a redirect", None),
        ("no connection", None),
    ];
    for (what, reply) in cases {
        let home = TempHome::new();
        let server = TokenServer::start();
        let mut args: Vec<String> = Vec::new();
        match (what, reply) {
            (_, Some(r)) => server.set_profile(r),
            ("a redirect", None) => server.set_profile(
                Reply::raw(302, "").header("Location", &format!("{}/elsewhere", server.base())),
            ),
            _ => args = vec!["--api-url".into(), closed_base.clone()],
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = login_with(&home, &server, &args, CC_SCOPES);
        let doc = home.read_creds();
        out.expect_code(0)
            .check(
                out.stderr.contains("warning") && out.stderr.contains("profile"),
                format!("{what}: a warning names the profile lookup"),
            )
            .check_eq(
                format!("{what}: the login is saved"),
                doc["claudeAiOauth"]["accessToken"].as_str(),
                Some(server.last_issued().access.as_str()),
            )
            .check_eq(format!("{what}: no plan"), plan(&home), (None, None))
            .check_eq(
                format!("{what}: only the exchange reached the token side (no redirect followed)"),
                server.count(),
                1,
            )
            .expect_no_secret(&issued_secrets(&server));
    }
}

#[test]
fn a_login_without_the_profile_scope_skips_the_lookup() {
    // --long-lived asks for user:inference alone; and a server may grant less than was asked.
    for (args, asked) in [
        (&["--long-lived"][..], "user:inference"),
        (&[][..], CC_SCOPES),
    ] {
        let home = TempHome::new();
        let server = TokenServer::start();
        server.set_policy(GrantPolicy {
            scope: Some("user:inference".into()),
            ..GrantPolicy::default()
        });
        server.set_profile(Reply::profile("ada@example.test", "claude_max", "tier"));
        let out = login_with(&home, &server, args, asked);
        out.expect_code(0)
            .check_eq(
                format!("{args:?}: profile lookups"),
                server.profile_requests().len(),
                0,
            )
            .check_eq(format!("{args:?}: no plan"), plan(&home), (None, None))
            .check(
                !out.stderr.contains("profile"),
                "a skipped lookup is not a failure to warn about",
            );
    }
}

#[test]
fn an_api_url_over_plain_http_to_another_host_is_refused_by_flag_and_by_variable() {
    let bad = "http://example.com";
    for by_flag in [true, false] {
        let home = TempHome::new();
        let server = TokenServer::start();
        let cmd = Cmd::new(&home)
            .server(&server)
            .args(["login", "--no-browser"]);
        let out = if by_flag {
            cmd.args(["--api-url", bad]).run()
        } else {
            cmd.env("CLAUDE_TOKEND_API_URL", bad).run()
        };
        out.expect_code(2)
            .expect_stderr_contains("https")
            .check(out.stdout.is_empty(), "no authorize URL was printed")
            .check_eq("requests sent", server.count(), 0)
            .check(!home.creds_path().exists(), "nothing saved");
        if !by_flag {
            out.expect_stderr_contains(&format!("invalid value '{bad}' for CLAUDE_TOKEND_API_URL"))
                .check(
                    !out.stderr.contains("'--api-url"),
                    "the error names the variable, not the flag",
                );
        }
    }
}

#[test]
fn an_api_base_with_a_path_keeps_it() {
    // Claude Code appends `/api/oauth/profile` to its base; a base with a trailing slash or a
    // path of its own (a proxy, say) is appended to, not replaced.
    let home = TempHome::new();
    let server = TokenServer::start();
    let out = login_with(
        &home,
        &server,
        &["--api-url", &format!("{}/proxy/", server.base())],
        CC_SCOPES,
    );
    out.expect_code(0);
    // The server answers the profile path only at its root: the proxied path reaches the token
    // side's recorder instead, which is how the test sees it.
    let paths: Vec<String> = server.requests().iter().map(|r| r.path.clone()).collect();
    out.check(
        paths.iter().any(|p| p == &format!("/proxy{PROFILE_PATH}")),
        format!("the lookup went to /proxy{PROFILE_PATH}: {paths:?}"),
    );
}
