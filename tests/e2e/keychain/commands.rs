//! The other commands on a Keychain login: `status` names the store and masks the tokens,
//! `login` creates (or replaces the login in) the item, `logout` removes `claudeAiOauth` and
//! deletes an item that held nothing else; and `--store auto` on Linux is the file, never the
//! Keychain.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};

use claude_tokend_e2e::keychain::*;
use claude_tokend_e2e::*;
use serde_json::{Value, json};

use super::*;

/// The last four characters of a token: what the masked form shows.
fn tail(token: &str) -> &str {
    &token[token.len() - 4..]
}

#[test]
fn status_names_the_keychain_item_and_masks_the_tokens() {
    let login = Login::fresh();
    let s = Setup::with(&item_doc(&login));
    let server = TokenServer::for_login(&login);
    let before = s.kc.db_bytes();
    let out = s.cmd(&server, &["status"]).run();
    out.expect_code(0)
        .expect_masked(&login.access)
        .expect_masked(&login.refresh)
        .check(
            out.stdout.contains(tail(&login.access)) && out.stdout.contains(tail(&login.refresh)),
            "status shows the masked tokens",
        )
        .check(
            out.stdout.to_lowercase().contains("keychain"),
            "status names the store",
        )
        .check(out.stdout.contains(SERVICE), "status names the service")
        .check(out.stdout.contains(TEST_USER), "status names the account")
        .check(
            !out.stdout.contains(".credentials.json"),
            "status of a Keychain login shows a file path",
        )
        .check_eq("requests", server.count(), 0)
        .check_eq("the keychain", s.kc.db_bytes(), before.clone());

    let out = s.cmd(&server, &["status", "--json"]).run();
    out.expect_code(0)
        .expect_masked(&login.access)
        .expect_masked(&login.refresh);
    let v: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("status --json is not JSON ({e})\n{}", out.context()));
    out.check_eq("store", v.get("store"), Some(&json!("keychain")))
        .check_eq("service", v.get("service"), Some(&json!(SERVICE)))
        .check_eq("account", v.get("account"), Some(&json!(TEST_USER)))
        .check_eq(
            "configDir",
            v.get("configDir").and_then(Value::as_str),
            s.home.claude_dir().to_str(),
        )
        .check(v.get("path").is_none(), "a Keychain login has no \"path\"")
        .check(
            v.to_string().contains(&login.expires_at.to_string()),
            "status --json carries expiresAt",
        )
        .check_eq("the keychain", s.kc.db_bytes(), before)
        .check_eq("writes", s.kc.writes(), Vec::<Vec<String>>::new());

    // An expired login: exit 1, as for the file.
    let expired = Login::expired();
    s.put(&item_doc(&expired));
    let out = s.cmd(&server, &["status"]).run();
    out.expect_code(1).expect_masked(&expired.access);
}

#[test]
fn status_of_a_missing_item_exits_78_naming_it() {
    let s = Setup::empty();
    let server = TokenServer::start();
    let out = s.cmd(&server, &["status"]).run();
    out.expect_code(78)
        .expect_stderr_contains(SERVICE)
        .expect_stderr_contains(TEST_USER);
}

// ---------------------------------------------------------------------------------------------
// login

/// A `login --store keychain` process with piped stdin and stdout.
struct LoginRun {
    child: Child,
    stdout: BufReader<std::process::ChildStdout>,
}

fn start_login(s: &Setup, server: &TokenServer) -> LoginRun {
    let mut cmd = Command::new(bin());
    cmd.env_clear()
        .env("PATH", s.kc.path_env())
        .env("FAKE_SECURITY_DB", s.kc.db_path())
        .env(
            "FAKE_SECURITY_LOG",
            s.home.path().join(".fake-security").join("log"),
        )
        .env("USER", TEST_USER)
        .env("HOME", s.home.path())
        .env("CLAUDE_TOKEND_TOKEN_URL", server.url())
        // The profile lookup goes to the loopback server too (it answers 404: a warning).
        .env("CLAUDE_TOKEND_API_URL", server.base())
        .args(["login", "--no-browser", "--store", "keychain"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("start claude-tokend login");
    let stdout = BufReader::new(child.stdout.take().expect("stdout"));
    LoginRun { child, stdout }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                out.push(
                    u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap(), 16).unwrap(),
                );
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}

impl LoginRun {
    /// Reads the authorize URL, lets the server accept the matching exchange, pastes CODE#STATE
    /// and collects the run.
    fn complete(mut self, server: &TokenServer) -> (Out, String) {
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("read the URL");
        let url = line.trim().to_owned();
        let q: HashMap<String, String> = url
            .split_once('?')
            .map(|(_, q)| q)
            .unwrap_or_default()
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), percent_decode(v)))
            .collect();
        let field = |k: &str| {
            q.get(k)
                .cloned()
                .unwrap_or_else(|| panic!("no {k} in the authorize URL {url}"))
        };
        let code = format!("code-{}", random_alnum(24));
        server.allow_code(AuthCode {
            code: code.clone(),
            challenge: field("code_challenge"),
            state: field("state"),
            redirect_uri: field("redirect_uri"),
            client_id: field("client_id"),
        });
        let stdin = self.child.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{code}#{}", field("state")).expect("paste");
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
        (
            Out {
                code: status.code().unwrap_or(-1),
                stdout: format!("{line}{stdout}"),
                stderr,
                cmd: "claude-tokend login --no-browser --store keychain".into(),
                elapsed: std::time::Duration::ZERO,
            },
            code,
        )
    }
}

fn token_posts(server: &TokenServer) -> usize {
    server
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path == TOKEN_PATH)
        .count()
}

#[test]
fn login_creates_the_item_through_stdin_with_no_secret_in_argv() {
    let s = Setup::empty();
    let server = TokenServer::start();
    let (out, code) = start_login(&s, &server).complete(&server);
    out.expect_code(0)
        .check_eq("code exchanges", token_posts(&server), 1);
    let issued = server.last_issued();
    let doc = s.item();
    out.check_eq(
        "accessToken in the item",
        oauth(&doc).get("accessToken"),
        Some(&json!(issued.access)),
    )
    .check_eq(
        "refreshToken in the item",
        oauth(&doc).get("refreshToken"),
        issued.refresh.clone().map(Value::from).as_ref(),
    )
    .check(
        !s.home.creds_path().exists(),
        "login --store keychain wrote a credentials file",
    );
    expect_one_write_of_the_item(&out, &s, true);
    let mut secrets = vec![issued.access.clone(), code];
    secrets.extend(issued.refresh.clone());
    expect_no_secret_in_argv(&out, &s.kc, &secrets);
    out.expect_no_secret(&secrets);
}

#[test]
fn login_over_an_existing_item_keeps_its_other_keys() {
    let old = Login::expired();
    let before = item_doc(&old);
    let s = Setup::with(&before);
    let server = TokenServer::start();
    let (out, _) = start_login(&s, &server).complete(&server);
    out.expect_code(0);
    let after = s.item();
    let top = |d: &Value| {
        let mut d = d.clone();
        d.as_object_mut().unwrap().remove("claudeAiOauth");
        d
    };
    out.check_eq("other top-level keys", top(&after), top(&before))
        .check_eq("key order", keys(&after), keys(&before))
        .check_eq(
            "the new login",
            oauth(&after).get("accessToken"),
            Some(&json!(server.last_issued().access)),
        )
        .check(
            oauth(&after).get("unknownOauthField").is_none(),
            "a new login is a new identity: nothing of the old one survives in claudeAiOauth",
        );
    expect_one_write_of_the_item(&out, &s, true);
}

// ---------------------------------------------------------------------------------------------
// logout

#[test]
fn logout_removes_the_login_from_the_item_and_keeps_the_rest() {
    let before = item_doc(&Login::fresh());
    let s = Setup::with(&before);
    let server = TokenServer::start();
    let out = s.cmd(&server, &["logout", "--yes"]).run();
    out.expect_code(0);
    let mut want = before.clone();
    want.as_object_mut().unwrap().remove("claudeAiOauth");
    out.check_eq("the item", s.item(), want);
    expect_one_write_of_the_item(&out, &s, true);
}

#[test]
fn logout_deletes_an_item_that_held_only_the_login() {
    let login = Login::fresh();
    let s = Setup::with(&json!({"claudeAiOauth": {
        "accessToken": login.access, "refreshToken": login.refresh, "expiresAt": login.expires_at
    }}));
    let server = TokenServer::start();
    let out = s.cmd(&server, &["logout", "--yes"]).run();
    out.expect_code(0).check_eq("the item", s.raw(), None);
    let writes = s.kc.writes();
    out.check_eq("writes", writes.len(), 1).check_eq(
        "the write",
        (
            writes[0][0].as_str(),
            option_value(&writes[0], "-a"),
            option_value(&writes[0], "-s"),
        ),
        ("delete-generic-password", Some(TEST_USER), Some(SERVICE)),
    );
}

#[test]
fn logout_without_yes_and_without_a_terminal_changes_nothing() {
    let s = Setup::with(&item_doc(&Login::fresh()));
    let before = s.kc.db_bytes();
    let server = TokenServer::start();
    let out = s.cmd(&server, &["logout"]).run();
    out.check(out.code != 0, "refused")
        .expect_stderr_contains("--yes")
        .check_eq("the keychain", s.kc.db_bytes(), before);
}

// ---------------------------------------------------------------------------------------------
// --store auto on Linux

#[test]
fn auto_on_linux_is_the_file_and_never_runs_security() {
    for flag in [None, Some("auto")] {
        let file_login = Login::due();
        let item_login = Login::due();
        let s = Setup::with(&item_doc(&item_login));
        let file_doc = file_login.doc();
        s.home.write_creds(&file_doc);
        let server = TokenServer::for_login(&file_login);
        server.accept_refresh(&item_login.refresh);
        let before = s.kc.db_bytes();
        let mut cmd = s.kc.apply(Cmd::new(&s.home).server(&server)).arg("--once");
        if let Some(f) = flag {
            cmd = cmd.args(["--store", f]);
        }
        let out = cmd.run();
        out.expect_code(0)
            .check_eq("requests", server.count(), 1)
            .check_eq(
                "the refresh token sent (the file's)",
                server.requests()[0].refresh_token(),
                Some(file_login.refresh.as_str()),
            )
            .check_eq("the keychain", s.kc.db_bytes(), before)
            .check_eq("security invocations", s.kc.invocations(), 0)
            .check_eq(
                "the file's new access token",
                s.home.read_creds()["claudeAiOauth"]["accessToken"].clone(),
                json!(server.last_issued().access),
            );
    }
}

#[test]
fn an_unknown_store_is_a_bad_command_line() {
    let s = Setup::with(&item_doc(&Login::due()));
    let server = TokenServer::start();
    for (flag, env) in [(Some("keyring"), None), (None, Some("keyring"))] {
        let mut cmd = s.kc.apply(Cmd::new(&s.home).server(&server)).arg("--once");
        if let Some(f) = flag {
            cmd = cmd.args(["--store", f]);
        }
        if let Some(e) = env {
            cmd = cmd.env("CLAUDE_TOKEND_STORE", e);
        }
        let out = cmd.run();
        out.expect_code(2)
            .check_eq("requests", server.count(), 0)
            .check_eq("security invocations", s.kc.invocations(), 0);
        if env.is_some() {
            out.expect_stderr_contains("CLAUDE_TOKEND_STORE");
        }
    }
}

#[test]
fn credentials_with_store_keychain_is_a_bad_command_line() {
    let s = Setup::with(&item_doc(&Login::due()));
    let server = TokenServer::start();
    let path = s.home.creds_path();
    let out = s
        .cmd(
            &server,
            &["--once", "--credentials", path.to_str().unwrap()],
        )
        .run();
    out.expect_code(2).check_eq("requests", server.count(), 0);
}

#[test]
fn refresh_command_refreshes_the_item_even_when_not_due() {
    let login = Login::fresh();
    let before = item_doc(&login);
    let s = Setup::with(&before);
    let server = TokenServer::for_login(&login);
    let out = s.cmd(&server, &["refresh"]).run();
    out.expect_code(0)
        .check_eq("requests sent", server.count(), 1)
        .expect_no_secret(&login.secrets());
    check_refreshed(&out, &s, &server, &before);
}

#[test]
fn token_prints_the_items_token_and_refreshes_it_first_when_due() {
    let fresh = Login::fresh();
    let s = Setup::with(&item_doc(&fresh));
    let server = TokenServer::for_login(&fresh);
    let out = s.cmd(&server, &["token"]).run();
    out.expect_code(0)
        .check_eq(
            "stdout",
            out.stdout.as_str(),
            &format!("{}\n", fresh.access),
        )
        .check_eq("stderr", out.stderr.as_str(), "")
        .check_eq("requests sent", server.count(), 0);

    let due = Login::due();
    let before = item_doc(&due);
    let s = Setup::with(&before);
    let server = TokenServer::for_login(&due);
    let out = s.cmd(&server, &["token"]).run();
    let issued = server.last_issued();
    out.expect_code(0)
        .check_eq(
            "stdout",
            out.stdout.as_str(),
            &format!("{}\n", issued.access),
        )
        .check_eq("stderr", out.stderr.as_str(), "")
        .check_eq("requests sent", server.count(), 1);
    check_refreshed(&out, &s, &server, &before);
}
