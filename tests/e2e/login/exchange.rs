//! The code exchange failing: a 429 is retried (the code is unspent), a 500 is not, and an
//! unreachable endpoint is retried until the budget, then exit 75. A refusal exits 77 only when
//! a new login can help; a redirect or a refused client exits 1 and says what to change.

use super::*;

#[test]
fn an_exchange_refused_with_429_is_retried_but_a_500_is_not() {
    // 429: the server turned the request away before looking at the code, so it is unspent.
    let home = TempHome::new();
    let server = TokenServer::start();
    server.push(Reply::error(429).header("Retry-After", "1"));
    let mut run = start_login(&home, &server, &[]);
    let (code, state) = authorize(&mut run, &server, CC_SCOPES, MANUAL_REDIRECT);
    run.paste(&format!("{code}#{state}"));
    let out = run.finish();
    out.expect_code(0);
    out.check_eq("requests: the 429, then the retry", server.count(), 2);
    let r = server.requests();
    out.check(
        r[1].received_ms - r[0].received_ms >= 950,
        "Retry-After honoured",
    );

    // 500: the server may have consumed the single-use code; sending it again is pointless
    // and is not done.
    let home = TempHome::new();
    let server = TokenServer::start();
    server.push(Reply::error(500));
    let mut run = start_login(&home, &server, &[]);
    let (code, state) = authorize(&mut run, &server, CC_SCOPES, MANUAL_REDIRECT);
    run.paste(&format!("{code}#{state}"));
    let out = run.finish();
    out.expect_code(75);
    out.expect_stderr_contains("HTTP 500");
    out.check_eq("one request only", server.count(), 1);
    out.check(!home.creds_path().exists(), "nothing saved");
    out.expect_only_files(&home.claude_dir(), &allowed_siblings(".credentials.json"));
}

#[test]
fn an_unreachable_endpoint_is_retried_until_the_budget_then_exits_75() {
    let home = TempHome::new();
    // A port nobody listens on: the connection is refused, so the code cannot have been spent.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let mut cmd = Command::new(bin());
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home.path())
        .env(
            "CLAUDE_TOKEND_TOKEN_URL",
            format!("http://127.0.0.1:{port}/v1/oauth/token"),
        )
        .args(["login", "--no-browser", "--retry-budget", "3s"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut url = String::new();
    stdout.read_line(&mut url).unwrap();
    let state = url
        .split(['?', '&'])
        .find_map(|kv| kv.strip_prefix("state="))
        .map(percent_decode)
        .unwrap();
    writeln!(child.stdin.as_mut().unwrap(), "some-code#{state}").unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(75), "{stderr}");
    assert!(stderr.contains("retrying"), "it retried: {stderr}");
    assert!(!home.creds_path().exists());
}

/// A login whose code exchange `reply` answers, as the user would run it: `args` and `vars`
/// added, the code pasted. The client id is the one the login's URL carries.
fn login_answered(reply: Reply, args: &[&str], vars: &[(&str, &str)]) -> (TempHome, Out) {
    let home = TempHome::new();
    let server = TokenServer::start();
    server.push(reply);
    let vars: Vec<(&str, &std::path::Path)> = vars
        .iter()
        .map(|(k, v)| (*k, std::path::Path::new(*v)))
        .collect();
    let mut run = start_login_with(&home, &server, args, &vars);
    let (_, q) = run.url();
    run.paste(&format!("code-{}#{}", random_alnum(16), q["state"]));
    let out = run.finish();
    out.check_eq("one exchange, never repeated", server.count(), 1);
    out.check(!home.creds_path().exists(), "nothing saved");
    (home, out)
}

#[test]
fn a_failed_exchange_exits_77_only_when_a_new_login_can_help() {
    let moved = "https://auth.example.test/v2/oauth/token";
    let cases = [
        // The code expired, was used, or belongs to another attempt: a new login helps. The
        // real server says so with `invalid_grant`, flat (RFC 6749) or in Anthropic's nested
        // error shape.
        (
            Reply::json(
                400,
                &json!({"error": "invalid_grant", "error_description": "Invalid 'code' in request."}),
            ),
            77,
        ),
        (
            Reply::json(
                400,
                &json!({"type": "error", "error": {"type": "invalid_grant", "message": "Invalid 'code' in request."}}),
            ),
            77,
        ),
        // Not the code: the endpoint moved. Only a setting can fix it.
        (Reply::raw(307, "").header("Location", moved), 1),
        (Reply::raw(308, ""), 1),
        // Not the code: the client, flat or nested. Only a setting can fix it.
        (Reply::json(400, &json!({"error": "invalid_client"})), 1),
        (
            Reply::json(
                400,
                &json!({"type": "error", "error": {"type": "invalid_client", "message": "Client not found"}}),
            ),
            1,
        ),
        (
            Reply::json(
                401,
                &json!({"error": "invalid_client", "error_description": "Client authentication failed"}),
            ),
            1,
        ),
        (
            Reply::json(400, &json!({"error": "unauthorized_client"})),
            1,
        ),
        // Not the code either: a new login fails the same way (the next test says what each
        // message asks to check).
        (Reply::json(400, &json!({"error": "invalid_request"})), 1),
        (
            Reply::json(
                403,
                &json!({"type": "error", "error": {"type": "permission_error"}}),
            ),
            1,
        ),
        (Reply::raw(400, ""), 1),
        // The server failed after the code was sent: temporary, and the code may be spent.
        (Reply::error(503), 75),
        (Reply::json(200, &json!({"token_type": "Bearer"})), 75),
    ];
    for (reply, want) in cases {
        let status = reply.status;
        let (_, out) = login_answered(reply.clone(), &[], &[]);
        out.check_eq(
            format!("HTTP {status} {}: exit code", reply.body),
            out.code,
            want,
        );
        let again = out.stderr.contains("`claude-tokend login` again");
        match want {
            77 => out.check(again, "says to run login again for a new code"),
            75 => out.check(
                again && out.stderr.contains("may"),
                "says the code may be spent and to run login again",
            ),
            _ => out.check(!out.stderr.contains("work once"), "does not blame the code"),
        };
    }
    // A redirect is named, so --token-url can be pointed at it.
    let (_, out) = login_answered(Reply::raw(307, "").header("Location", moved), &[], &[]);
    out.expect_code(1)
        .expect_stderr_contains(moved)
        .expect_stderr_contains("--token-url");
}

/// A refusal a new code cannot fix exits 1 and says what the server said and what to check;
/// only `invalid_grant` asks for a new login (CONTRACT.md: 77 only when a new login can help).
#[test]
fn a_refusal_that_is_not_about_the_code_says_what_to_check() {
    let proxy_page = "<!DOCTYPE html><html><head><title>Access Denied</title></head>\
                      <body>Blocked by policy</body></html>";
    let cases: Vec<(&str, Reply, &[&str], &[&str])> = vec![
        (
            "a wrong token URL (404)",
            Reply::json(404, &json!({"error": "not_found"})),
            &[],
            &["HTTP 404", "CLAUDE_TOKEND_TOKEN_URL"],
        ),
        (
            "a wrong token URL (405)",
            Reply::raw(405, ""),
            &[],
            &["HTTP 405", "CLAUDE_TOKEND_TOKEN_URL"],
        ),
        (
            "a proxy's page (403)",
            Reply::raw(403, proxy_page).header("Content-Type", "text/html"),
            &[],
            &["HTTP 403", "HTML page", "proxy"],
        ),
        (
            "an authentication error (401)",
            Reply::json(
                401,
                &json!({"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}}),
            ),
            &[],
            &[
                "authentication_error",
                "token endpoint",
                "CLAUDE_TOKEND_TOKEN_URL",
            ],
        ),
        (
            "a refused redirect URI",
            Reply::json(
                400,
                &json!({"error": "invalid_request", "error_description": "Invalid redirect_uri"}),
            ),
            &[
                "--redirect-uri",
                "https://platform.claude.com/oauth/code/callback",
            ],
            &["Invalid redirect_uri", "--redirect-uri"],
        ),
        (
            "an unsupported grant type",
            Reply::json(400, &json!({"error": "unsupported_grant_type"})),
            &[],
            &["unsupported_grant_type", "CLAUDE_TOKEND_TOKEN_URL"],
        ),
        (
            "another error that names the code",
            Reply::json(
                400,
                &json!({"type": "error", "error": {"type": "invalid_request_error", "message": "Invalid 'code' in request"}}),
            ),
            &[],
            &["Invalid 'code' in request", "`claude-tokend login` again"],
        ),
        (
            "a bare 400",
            Reply::raw(400, ""),
            &[],
            &["HTTP 400", "did not say why", "CLAUDE_TOKEND_TOKEN_URL"],
        ),
    ];
    for (what, reply, args, words) in cases {
        // The harness sets the token URL by its variable: the message names the setting the
        // way the user gave it (the redirect URI here by its flag).
        let (_, out) = login_answered(reply, args, &[]);
        out.check_eq(format!("{what}: exit code"), out.code, 1)
            .check(
                !out.stderr.contains("work once"),
                format!("{what}: the code is not blamed"),
            );
        for word in words {
            out.check(
                out.stderr.contains(word),
                format!("{what}: stderr names {word:?}"),
            );
        }
    }
}

/// How a client id was set for a login: its `login` arguments and environment, the id, and the
/// words that name where it came from.
struct ClientSetting {
    args: &'static [&'static str],
    vars: &'static [(&'static str, &'static str)],
    id: &'static str,
    origin: &'static str,
}

#[test]
fn invalid_client_names_the_client_id_and_where_it_came_from() {
    let refused = || {
        Reply::json(
            401,
            &json!({"error": "invalid_client", "error_description": "Client authentication failed"}),
        )
    };
    let cases = [
        ClientSetting {
            args: &[],
            vars: &[],
            id: CLIENT_ID,
            origin: "default",
        },
        ClientSetting {
            args: &["--client-id", "flag-client-0001"],
            vars: &[],
            id: "flag-client-0001",
            origin: "--client-id",
        },
        ClientSetting {
            args: &[],
            vars: &[("ANTHROPIC_CLIENT_ID", "env-client-0002")],
            id: "env-client-0002",
            origin: "ANTHROPIC_CLIENT_ID",
        },
    ];
    for c in cases {
        let (_, out) = login_answered(refused(), c.args, c.vars);
        out.expect_code(1)
            .expect_stderr_contains("invalid_client")
            .expect_stderr_contains(&format!("`{}`", c.id))
            .expect_stderr_contains(c.origin)
            .check(
                !out.stderr.contains("`claude-tokend login` again")
                    && !out.stderr.contains("work once"),
                "a new login with the same client cannot help, and is not suggested",
            );
        if c.origin != "default" {
            out.check(!out.stderr.contains("default"), "not blamed on the default");
        }
    }
}

/// A redirect's `Location` is named so `--token-url` can be pointed at it: a relative one is
/// resolved against the token URL (the program refuses a relative `--token-url`), and one with
/// raw UTF-8 in it is named too, not taken for no `Location` at all.
#[test]
fn a_relative_or_non_ascii_location_is_named_as_a_url() {
    let (_, out) = login_answered(
        Reply::raw(307, "").header("Location", "/v1/oauth/token2"),
        &[],
        &[],
    );
    out.expect_code(1)
        .check(
            out.stderr.contains("--token-url http://127.0.0.1:")
                && out.stderr.contains("/v1/oauth/token2"),
            "the relative Location is offered as a whole URL",
        )
        .check(
            !out.stderr.contains("--token-url /v1"),
            "no relative URL is offered",
        );
    let (_, out) = login_answered(
        Reply::raw(308, "").header("Location", "https://auth.example.test/tökën"),
        &[],
        &[],
    );
    out.expect_code(1)
        .expect_stderr_contains("--token-url https://auth.example.test/t%C3%B6k%C3%ABn")
        .check(!out.stderr.contains("no Location"), "the Location was read");
}
