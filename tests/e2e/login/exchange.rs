//! The code exchange failing: a 429 is retried (the code is unspent), a 500 is not, and an
//! unreachable endpoint is retried until the budget, then exit 75.

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
    out.check(out.code != 0, "the login fails");
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
