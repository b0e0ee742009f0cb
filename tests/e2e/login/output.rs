//! What `login` prints, and where it may not: server text (the account's email, the plan) is
//! escaped before it reaches the terminal, and once the login is saved, a reader that has gone
//! (`login | head -1`) or a terminal that hung up costs nothing: the login stays saved, and the
//! exit code is the contract's (0; 129 after SIGHUP), never a panic.

use std::fs::File;
use std::io::BufReader;
use std::os::fd::{FromRawFd, OwnedFd};

use super::*;

#[test]
fn server_text_in_what_login_prints_is_escaped() {
    let home = TempHome::new();
    let server = TokenServer::start();
    server.set_profile(Reply::json(
        200,
        &json!({
            "account": {"email": "ada\u{202e}@example.test"},
            "organization": {"organization_type": "claude_max",
                             "rate_limit_tier": "tier\u{1b}[31m\u{7}"},
        }),
    ));
    let mut run = start_login(&home, &server, &[]);
    let (code, state) = authorize(&mut run, &server, CC_SCOPES, MANUAL_REDIRECT);
    run.paste(&format!("{code}#{state}"));
    let out = run.finish();
    out.expect_code(0);
    for raw in ['\u{1b}', '\u{7}', '\u{202e}'] {
        out.check(!out.all().contains(raw), format!("{raw:?} printed raw"));
    }
    out.check(
        out.stdout.contains(r"Plan max (tier\u{1b}[31m\u{7})"),
        "the plan is shown escaped",
    )
    .check(
        out.stdout.contains(r"Account ada\u{202e}@example.test"),
        "the email is shown escaped",
    );
}

#[test]
fn a_reader_gone_after_the_url_costs_the_login_nothing() {
    // `claude-tokend login | head -1`: the URL is read, then the reader goes away.
    let home = TempHome::new();
    let server = TokenServer::start();
    let mut run = start_login(&home, &server, &[]);
    let (code, state) = authorize(&mut run, &server, CC_SCOPES, MANUAL_REDIRECT);
    let LoginRun { mut child, stdout } = run;
    drop(stdout);
    writeln!(child.stdin.as_mut().unwrap(), "{code}#{state}").unwrap();
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(
        home.read_creds()["claudeAiOauth"]["accessToken"].as_str(),
        Some(server.last_issued().access.as_str()),
        "the login is saved"
    );
}

/// A pseudo-terminal: the master, read by the test as a terminal window would be, and the
/// slave, the login's stdout and stderr. Closing the master hangs the terminal up: every write
/// to the slave then fails (EIO).
fn terminal() -> (File, OwnedFd) {
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: openpty fills in two new descriptors, owned from here on.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // Not inherited: a login holding the master open would keep its terminal from hanging up.
    for fd in [master, slave] {
        // SAFETY: fcntl(2) on a descriptor just opened.
        assert_eq!(
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) },
            0
        );
    }
    // SAFETY: both are open descriptors nothing else owns.
    unsafe { (File::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) }
}

#[test]
fn a_terminal_that_hung_up_during_the_exchange_costs_the_login_nothing() {
    let home = TempHome::new();
    let server = TokenServer::start();
    server.set_delay(Duration::from_millis(1500));
    let (master, slave) = terminal();
    let mut child = Command::new(bin())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home.path())
        .env("CLAUDE_TOKEND_TOKEN_URL", server.url())
        .env("CLAUDE_TOKEND_API_URL", server.base())
        .args(["login", "--no-browser"])
        .stdin(Stdio::piped())
        .stdout(slave.try_clone().unwrap())
        .stderr(slave)
        .spawn()
        .unwrap();
    // The terminal shows the URL among the other lines.
    let mut screen = BufReader::new(master);
    let url = loop {
        let mut line = String::new();
        assert!(screen.read_line(&mut line).unwrap() > 0, "no URL shown");
        if let Some(url) = line.trim().strip_prefix(AUTHORIZE_URL) {
            break url.to_owned();
        }
    };
    let q: HashMap<String, String> = url
        .trim_start_matches('?')
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), percent_decode(v)))
        .collect();
    let code = format!("code-{}", random_alnum(24));
    server.allow_code(AuthCode {
        code: code.clone(),
        challenge: q["code_challenge"].clone(),
        state: q["state"].clone(),
        redirect_uri: MANUAL_REDIRECT.to_owned(),
        client_id: CLIENT_ID.to_owned(),
    });
    writeln!(child.stdin.as_mut().unwrap(), "{code}#{}", q["state"]).unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || server.count() >= 1),
        "the exchange never came"
    );
    // The terminal window closes while the exchange is in flight: hung up, and SIGHUP.
    drop(screen);
    // SAFETY: kill(2) on our own, not yet reaped, child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGHUP) }, 0);
    let status = child.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(129),
        "exit 128 + SIGHUP, not a panic: {status:?}"
    );
    assert_eq!(
        home.read_creds()["claudeAiOauth"]["accessToken"].as_str(),
        Some(server.last_issued().access.as_str()),
        "the login is saved"
    );
}
