//! Suspected weaknesses, each settled by a test that shows it (on the code before its fix): a
//! stray loopback callback ending a login, lock names from a relative config dir, and the
//! in-place write's file mode.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use claude_tokend_e2e::*;

// ---------------------------------------------------------------------------------------------
// `login --loopback`: only a callback carrying this login's state counts

/// A `login --loopback --no-browser` process, its callback port and the state it expects.
struct Loopback {
    child: Child,
    port: u16,
    state: String,
}

impl Loopback {
    fn start(home: &TempHome, server: &TokenServer) -> Loopback {
        let mut child = Command::new(bin())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", home.path())
            .env("CLAUDE_TOKEND_TOKEN_URL", server.url())
            .args(["login", "--no-browser", "--loopback"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start claude-tokend login --loopback");
        let mut url = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut url)
            .expect("the authorize URL");
        let param = |name: &str| {
            url.trim()
                .split_once('?')
                .map(|(_, q)| q)
                .unwrap_or_default()
                .split('&')
                .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
                .unwrap_or_else(|| panic!("no {name} in {url}"))
                .to_owned()
        };
        let redirect = param("redirect_uri")
            .replace("%3A", ":")
            .replace("%2F", "/");
        let port = redirect
            .trim_start_matches("http://localhost:")
            .trim_end_matches("/callback")
            .parse()
            .unwrap_or_else(|_| panic!("a loopback redirect_uri in {url}"));
        Loopback {
            child,
            port,
            state: param("state"),
        }
    }

    /// One GET to the callback server; the raw reply.
    fn get(&self, path: &str) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to the callback");
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: localhost:{}\r\n\r\n",
            self.port
        )
        .unwrap();
        let mut reply = String::new();
        let _ = s.read_to_string(&mut reply);
        reply
    }

    /// Still waiting for the browser, a moment after the last callback.
    fn still_waiting(&mut self) -> bool {
        std::thread::sleep(Duration::from_millis(300));
        matches!(self.child.try_wait(), Ok(None))
    }

    fn finish(mut self) -> Out {
        let done = wait_until(RUN_TIMEOUT, || matches!(self.child.try_wait(), Ok(Some(_))));
        if !done {
            let _ = self.child.kill();
        }
        let status = self.child.wait().expect("wait for login");
        let mut stderr = String::new();
        let _ = self
            .child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr);
        Out {
            code: status.code().unwrap_or(-1),
            stdout: String::new(),
            stderr,
            cmd: "claude-tokend login --loopback".into(),
            elapsed: Duration::ZERO,
        }
    }
}

/// Any local process can reach the callback port. A callback without this login's state, error
/// or not, is ignored (with a warning) and the login keeps waiting for the real one.
#[test]
fn a_callback_without_our_state_cannot_end_a_loopback_login() {
    let home = TempHome::new();
    let server = TokenServer::start();
    let mut run = Loopback::start(&home, &server);
    for stray in [
        "/callback?error=access_denied&error_description=stray".to_owned(),
        "/callback?error=access_denied&state=not-ours".to_owned(),
    ] {
        let reply = run.get(&stray);
        assert!(reply.starts_with("HTTP/1.1 400"), "{stray}: {reply}");
        assert!(run.still_waiting(), "{stray} ended the login");
    }
    // The real answer, with our state, still ends it (the server refuses the unknown code).
    let reply = run.get(&format!(
        "/callback?error=access_denied&state={}",
        run.state
    ));
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let out = run.finish();
    out.expect_code(1)
        .expect_stderr_contains("access_denied")
        .expect_stderr_contains("ignored a callback")
        .check_eq("requests sent", server.count(), 0);
}

/// The provider's error text is printed with control characters escaped: a callback cannot
/// write terminal escape sequences into the user's terminal.
#[test]
fn a_provider_error_is_printed_with_control_characters_escaped() {
    let home = TempHome::new();
    let server = TokenServer::start();
    let run = Loopback::start(&home, &server);
    let reply = run.get(&format!(
        "/callback?error=access_denied%1b%5D0%3Bowned%07&error_description=line%0Anext%1b%5B2J&state={}",
        run.state
    ));
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let out = run.finish();
    out.expect_code(1)
        .check(
            !out.stderr.contains('\u{1b}') && !out.stderr.contains('\u{7}'),
            "no raw escape or bell character on stderr",
        )
        .check(
            !out.stderr.contains("line\nnext"),
            "no raw newline from the provider's text",
        )
        .expect_stderr_contains("access_denied")
        .expect_stderr_contains(r"\u{1b}");
}
