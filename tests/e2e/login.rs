//! `login` (paste and loopback flows, long-lived) and `logout`, run as real processes. The
//! suite's endpoint plays the token endpoint and only accepts an exchange whose verifier hashes
//! to the challenge in the printed URL, with the same redirect_uri, client_id and state. It also
//! plays the API base, so the profile lookup after the exchange never leaves the machine (what
//! the lookup does is in `login_profile`).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use claude_tokend_e2e::*;
use serde_json::{Value, json};

const CLIENT_ID: &str = "9d1c250a-e61b-44d9-88ed-5944d1962f5e";
pub(crate) const MANUAL_REDIRECT: &str = "https://platform.claude.com/oauth/code/callback";
/// Claude Code 2.1.332's authorize page and the scopes it asks for: a login made with them is
/// one Claude Code treats as its own.
const AUTHORIZE_URL: &str = "https://claude.com/cai/oauth/authorize";
pub(crate) const CC_SCOPES: &str = "org:create_api_key user:profile user:inference \
                                    user:sessions:claude_code user:mcp_servers user:file_upload";

/// A `login` process with piped stdin and stdout, so the test can read the URL and answer.
pub(crate) struct LoginRun {
    child: Child,
    stdout: BufReader<std::process::ChildStdout>,
}

/// `login --no-browser ARGS` against `server`, as token endpoint and API base alike.
pub(crate) fn start_login(home: &TempHome, server: &TokenServer, args: &[&str]) -> LoginRun {
    start_login_with(home, server, args, &[])
}

/// [`start_login`] with more variables in its environment.
pub(crate) fn start_login_with(
    home: &TempHome,
    server: &TokenServer,
    args: &[&str],
    vars: &[(&str, &std::path::Path)],
) -> LoginRun {
    let mut cmd = Command::new(bin());
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home.path())
        .env("CLAUDE_TOKEND_TOKEN_URL", server.url())
        .env("CLAUDE_TOKEND_API_URL", server.base())
        .envs(vars.iter().copied())
        .arg("login")
        .arg("--no-browser")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("start claude-tokend login");
    let stdout = BufReader::new(child.stdout.take().expect("stdout"));
    LoginRun { child, stdout }
}

impl LoginRun {
    /// The authorize URL: the first line on stdout.
    fn url(&mut self) -> (String, HashMap<String, String>) {
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("read the URL");
        let url = line.trim().to_owned();
        let query = url.split_once('?').map(|(_, q)| q).unwrap_or_default();
        let params = query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), percent_decode(v)))
            .collect();
        (url, params)
    }

    /// The process id, for sending it a signal.
    pub(crate) fn id(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn paste(&mut self, text: &str) {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{text}").expect("paste");
    }

    pub(crate) fn finish(mut self) -> Out {
        drop(self.child.stdin.take());
        let mut stdout = String::new();
        self.stdout.read_to_string(&mut stdout).unwrap();
        let mut stderr = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        let status = self.child.wait().unwrap();
        Out {
            code: status.code().unwrap_or(-1),
            stdout,
            stderr,
            cmd: "claude-tokend login".into(),
            elapsed: Duration::ZERO,
        }
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).expect("hex escape"));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}

/// Reads the URL, checks every parameter, and tells the server which exchange to accept.
pub(crate) fn authorize(
    run: &mut LoginRun,
    server: &TokenServer,
    scope: &str,
    redirect: &str,
) -> (String, String) {
    let (url, q) = run.url();
    assert!(
        url.starts_with(&format!("{AUTHORIZE_URL}?code=true&")),
        "{url}"
    );
    assert_eq!(q["client_id"], CLIENT_ID);
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["redirect_uri"], redirect);
    assert_eq!(q["scope"], scope);
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(
        q["code_challenge"].len(),
        43,
        "base64url SHA-256 without padding"
    );
    assert!(q["state"].len() >= 32, "a random state");
    assert_ne!(q["state"], q["code_challenge"]);
    let code = format!("code-{}", random_alnum(24));
    server.allow_code(AuthCode {
        code: code.clone(),
        challenge: q["code_challenge"].clone(),
        state: q["state"].clone(),
        redirect_uri: redirect.to_owned(),
        client_id: CLIENT_ID.to_owned(),
    });
    (code, q["state"].clone())
}

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

#[test]
fn loopback_login_receives_the_code_on_the_callback() {
    let home = TempHome::new();
    let server = TokenServer::start();
    let mut run = start_login(&home, &server, &["--loopback"]);
    let (url, q) = run.url();
    let redirect = q["redirect_uri"].clone();
    assert!(
        redirect.starts_with("http://localhost:") && redirect.ends_with("/callback"),
        "{url}"
    );
    let port: u16 = redirect
        .trim_start_matches("http://localhost:")
        .trim_end_matches("/callback")
        .parse()
        .unwrap();
    let code = format!("code-{}", random_alnum(24));
    server.allow_code(AuthCode {
        code: code.clone(),
        challenge: q["code_challenge"].clone(),
        state: q["state"].clone(),
        redirect_uri: redirect.clone(),
        client_id: CLIENT_ID.to_owned(),
    });
    let get = |path: &str| -> String {
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the callback");
        write!(s, "GET {path} HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n").unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap();
        reply
    };
    assert!(
        get("/favicon.ico").starts_with("HTTP/1.1 404"),
        "only /callback is served"
    );
    assert!(
        get("/callback?code=x&state=wrong").starts_with("HTTP/1.1 400"),
        "a wrong state is refused and ignored"
    );
    let reply = get(&format!("/callback?code={code}&state={}", q["state"]));
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains("close this window"), "{reply}");
    let out = run.finish();
    out.expect_code(0);
    out.check_eq("one exchange", server.count(), 1);
    out.check_eq(
        "redirect_uri repeated in the exchange",
        server.requests()[0].body["redirect_uri"].as_str(),
        Some(redirect.as_str()),
    );
    out.check_eq(
        "saved",
        home.read_creds()["claudeAiOauth"]["accessToken"].as_str(),
        Some(server.last_issued().access.as_str()),
    );
}

#[test]
fn logout_with_yes_keeps_the_other_keys() {
    let home = TempHome::new();
    let before = Login::fresh().doc();
    home.write_creds(&before);
    let out = Cmd::new(&home).args(["logout", "--yes"]).run();
    out.expect_code(0);
    let after = home.read_creds();
    let mut want = before.clone();
    want.as_object_mut().unwrap().remove("claudeAiOauth");
    out.check_eq("only claudeAiOauth removed", &after, &want);
    out.check_eq("mode", home.mode(), 0o600);
    out.expect_only_files(&home.claude_dir(), &allowed_siblings(".credentials.json"));
}

#[test]
fn logout_deletes_a_file_that_held_only_the_login() {
    let home = TempHome::new();
    let login = Login::fresh();
    home.write_creds(&json!({"claudeAiOauth": {"accessToken": login.access, "refreshToken": login.refresh, "expiresAt": login.expires_at}}));
    let out = Cmd::new(&home).args(["logout", "--yes"]).run();
    out.expect_code(0);
    out.check(!home.creds_path().exists(), "the empty file is deleted");
}

#[test]
fn logout_without_a_terminal_and_without_yes_changes_nothing() {
    let home = TempHome::new();
    home.write_creds(&Login::fresh().doc());
    let before = home.state();
    let out = Cmd::new(&home).arg("logout").run();
    out.check(out.code != 0, "refused");
    out.expect_untouched(&home.creds_path(), &before);
    out.expect_stderr_contains("--yes");
}

#[test]
fn logout_of_a_malformed_file_changes_nothing() {
    let home = TempHome::new();
    home.write_raw(b"{\"claudeAiOauth\": ");
    let before = home.state();
    let out = Cmd::new(&home).args(["logout", "--yes"]).run();
    out.expect_code(78);
    out.expect_untouched(&home.creds_path(), &before);
}

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

// ---------------------------------------------------------------------------------------------
// Nothing to log out is success; a store `login` cannot write is refused before the browser.

#[test]
fn logout_twice_succeeds_both_times() {
    let home = TempHome::new();
    home.write_creds(&json!({"claudeAiOauth": Login::fresh().doc()["claudeAiOauth"]}));
    Cmd::new(&home)
        .args(["logout", "--yes"])
        .run()
        .expect_code(0);
    assert!(!home.creds_path().exists(), "the first logout removed it");
    let out = Cmd::new(&home).args(["logout", "--yes"]).run();
    out.expect_code(0);
    out.check(out.stdout.contains("No login"), "says there is none");
    out.check(!home.creds_path().exists(), "and created nothing");

    // A file that holds other keys but no login: nothing to do, the file untouched.
    let home = TempHome::new();
    home.write_creds(&json!({"mcpOAuth": {"x": 1}}));
    let before = home.state();
    let out = Cmd::new(&home).args(["logout", "--yes"]).run();
    out.expect_code(0);
    out.expect_untouched(&home.creds_path(), &before);
}

#[test]
fn logout_with_no_store_at_all_says_so_exits_0_and_creates_nothing() {
    let home = TempHome::new();
    // Not even ~/.claude, and no terminal or --yes: nothing to confirm either.
    let out = Cmd::new(&home).arg("logout").run();
    out.expect_code(0);
    out.check(out.stdout.contains("No login"), "says there is none");
    out.check(!home.claude_dir().exists(), "no directory made for nothing");
    let out = Cmd::new(&home).args(["logout", "--yes"]).run();
    out.expect_code(0);
    out.check(!home.claude_dir().exists(), "no directory made for nothing");
}

/// `login` with stdin closed: whatever the store, the URL must not be printed when the store
/// cannot be written.
fn login_without_paste(home: &TempHome, server: &TokenServer) -> Cmd {
    Cmd::new(home)
        .server(server)
        .env("CLAUDE_TOKEND_API_URL", server.base())
        .args(["login", "--no-browser"])
}

#[track_caller]
fn expect_refused_before_the_browser(out: &Out, code: i32, server: &TokenServer) {
    out.expect_code(code)
        .check(
            !out.stdout.contains("authorize"),
            "no authorize URL was printed",
        )
        .check(
            !out.stderr.contains("Open this URL"),
            "the user is not sent to the browser",
        )
        .check_eq("requests", server.count(), 0);
}

#[test]
fn login_refuses_a_malformed_file_before_printing_the_url() {
    let home = TempHome::new();
    home.write_raw(b"{\"claudeAiOauth\": ");
    let before = home.state();
    let server = TokenServer::start();
    let out = login_without_paste(&home, &server).run();
    expect_refused_before_the_browser(&out, 78, &server);
    out.expect_untouched(&home.creds_path(), &before)
        .expect_stderr_contains(&home.creds_path().display().to_string())
        .expect_only_files(&home.claude_dir(), &allowed_siblings(".credentials.json"));
}

#[test]
fn login_refuses_a_directory_it_cannot_write_before_printing_the_url() {
    let server = TokenServer::start();
    // A directory no one can create files in, root included.
    let home = TempHome::new();
    let out = login_without_paste(&home, &server)
        .args([
            "--credentials",
            "/proc/claude-tokend-test/.credentials.json",
        ])
        .run();
    expect_refused_before_the_browser(&out, 78, &server);
    let out = login_without_paste(&home, &server)
        .args(["--credentials", "/proc/.credentials.json"])
        .run();
    expect_refused_before_the_browser(&out, 78, &server);
    out.expect_stderr_contains("/proc");

    // A directory the user cannot write in, where permissions apply (not to root).
    let home = TempHome::new();
    std::fs::create_dir(home.claude_dir()).unwrap();
    let mut perms = std::fs::metadata(home.claude_dir()).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o500);
    std::fs::set_permissions(home.claude_dir(), perms).unwrap();
    let probe = home.claude_dir().join("probe");
    if std::fs::write(&probe, b"").is_err() {
        let out = login_without_paste(&home, &server).run();
        expect_refused_before_the_browser(&out, 78, &server);
        out.expect_stderr_contains(&home.claude_dir().display().to_string());
    } else {
        let _ = std::fs::remove_file(&probe);
    }
    let mut perms = std::fs::metadata(home.claude_dir()).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o700);
    std::fs::set_permissions(home.claude_dir(), perms).unwrap();
}

#[test]
fn login_refuses_a_locked_keychain_before_printing_the_url() {
    let home = TempHome::new();
    std::fs::create_dir(home.claude_dir()).unwrap();
    let kc = claude_tokend_e2e::keychain::FakeKeychain::new(&home);
    kc.lock();
    let server = TokenServer::start();
    let out = kc
        .apply(login_without_paste(&home, &server))
        .args(["--store", "keychain"])
        .run();
    expect_refused_before_the_browser(&out, 75, &server);
    out.expect_stderr_contains("unlock");
}

#[test]
fn login_creates_a_missing_config_directory_0700_before_printing_the_url() {
    let home = TempHome::new();
    let dir = home.path().join("deep/new/claude");
    let server = TokenServer::start();
    let mut run = start_login_with(&home, &server, &[], &[("CLAUDE_CONFIG_DIR", &dir)]);
    let (code, state) = authorize(&mut run, &server, CC_SCOPES, MANUAL_REDIRECT);
    // The URL is out: the directory is there already, before anything was pasted.
    assert!(dir.is_dir(), "created before the browser step");
    assert_eq!(mode_of(&dir), 0o700);
    run.paste(&format!("{code}#{state}"));
    let out = run.finish();
    out.expect_code(0);
    out.check(dir.join(".credentials.json").is_file(), "saved there");
}

// ---------------------------------------------------------------------------------------------
// Reading the paste

#[test]
fn an_empty_paste_asks_again() {
    let home = TempHome::new();
    let server = TokenServer::start();
    let mut run = start_login(&home, &server, &[]);
    let (code, state) = authorize(&mut run, &server, CC_SCOPES, MANUAL_REDIRECT);
    run.paste("");
    run.paste("   ");
    run.paste(&format!("{code}#{state}"));
    let out = run.finish();
    out.expect_code(0);
    out.check_eq("one exchange", server.count(), 1);
    out.check(
        out.stderr.matches("(CODE#STATE)").count() == 3,
        "asked three times",
    );
}

#[test]
fn empty_pastes_end_at_end_of_input_or_after_a_few_tries() {
    // End of input after one empty line.
    let home = TempHome::new();
    let server = TokenServer::start();
    let mut run = start_login(&home, &server, &[]);
    authorize(&mut run, &server, CC_SCOPES, MANUAL_REDIRECT);
    run.paste("");
    let out = run.finish();
    out.expect_code(1)
        .expect_stderr_contains("nothing was sent")
        .check_eq("requests", server.count(), 0);

    // A stream of empty lines (`yes ''`) does not keep it asking for ever.
    let home = TempHome::new();
    let server = TokenServer::start();
    let mut run = start_login(&home, &server, &[]);
    authorize(&mut run, &server, CC_SCOPES, MANUAL_REDIRECT);
    // It stops reading after a few, so the rest of this write may find the pipe closed.
    let stdin = run.child.stdin.as_mut().expect("stdin");
    let _ = stdin.write_all("\n".repeat(50).as_bytes());
    let out = run.finish();
    out.expect_code(1)
        .expect_stderr_contains("nothing was sent")
        .check_eq("requests", server.count(), 0);
}

#[test]
fn a_paste_longer_than_64_kib_is_refused_before_any_request() {
    let home = TempHome::new();
    let server = TokenServer::start();
    let mut run = start_login(&home, &server, &[]);
    let (code, state) = authorize(&mut run, &server, CC_SCOPES, MANUAL_REDIRECT);
    // It stops reading past the limit, so the rest of this write may find the pipe closed.
    let stdin = run.child.stdin.as_mut().expect("stdin");
    let _ = writeln!(stdin, "{code}{}#{state}", "x".repeat(65 * 1024));
    let out = run.finish();
    out.expect_code(1)
        .expect_stderr_contains("64 KiB")
        .check_eq("requests", server.count(), 0);
    out.check(!home.creds_path().exists(), "nothing saved");
}
