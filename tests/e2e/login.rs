//! `login` (paste and loopback flows, long-lived) and `logout`, run as real processes. The
//! suite's endpoint plays the token endpoint and only accepts an exchange whose verifier hashes
//! to the challenge in the printed URL, with the same redirect_uri, client_id and state. It also
//! plays the API base, so the profile lookup after the exchange never leaves the machine (what
//! the lookup does is in `login_profile`).
//!
//! This file holds what the tests share (a `login` process, its URL checked and answered); the
//! tests are in `login/`, one module per area.

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

mod client;
mod exchange;
mod flows;
mod logout;
mod loopback;
mod output;
mod paste;
mod refused;
mod steps;

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
    start_login_as(home, server, args, vars, |_| {})
}

/// [`start_login_with`], its command adjusted by `adjust` last (its output, its limits).
pub(crate) fn start_login_as(
    home: &TempHome,
    server: &TokenServer,
    args: &[&str],
    vars: &[(&str, &std::path::Path)],
    adjust: impl FnOnce(&mut Command),
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
    adjust(&mut cmd);
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

    /// Ends a run a test gave up on (it failed), so no `login` is left waiting behind it.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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
    authorize_for(run, server, scope, redirect, CLIENT_ID)
}

/// [`authorize`] for a login made with `client_id` (`--client-id`, `ANTHROPIC_CLIENT_ID`).
pub(crate) fn authorize_for(
    run: &mut LoginRun,
    server: &TokenServer,
    scope: &str,
    redirect: &str,
    client_id: &str,
) -> (String, String) {
    let (url, q) = run.url();
    assert!(
        url.starts_with(&format!("{AUTHORIZE_URL}?code=true&")),
        "{url}"
    );
    assert_eq!(q["client_id"], client_id);
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
        client_id: client_id.to_owned(),
    });
    (code, q["state"].clone())
}
