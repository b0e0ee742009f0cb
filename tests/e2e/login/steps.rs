//! The steps after the code is sent, as the user sees them: a slow profile lookup says what it
//! waits for, a signal names the step it finds (CONTRACT.md "Interrupted, slow or absent"), and
//! a second Ctrl-C says exactly what is lost: the new login, never the one stored before.

use std::fs::File;
use std::time::Instant;

use super::*;

/// A login whose code was pasted, its exchange answered after `exchange_delay` and its profile
/// lookup after `profile_delay`, its stderr going to `stderr` (read while it runs).
fn pasted(
    home: &TempHome,
    server: &TokenServer,
    exchange_delay: Duration,
    profile_delay: Duration,
    stderr: &std::path::Path,
) -> (Child, BufReader<std::process::ChildStdout>) {
    server.set_delay(exchange_delay);
    server.set_profile(
        Reply::profile("ada@example.test", "claude_max", "default_claude_max_20x")
            .delay(profile_delay),
    );
    let file = File::create(stderr).unwrap();
    let mut run = start_login_as(home, server, &[], &[], |cmd| {
        cmd.stderr(file);
    });
    let (code, state) = authorize(&mut run, server, CC_SCOPES, MANUAL_REDIRECT);
    run.paste(&format!("{code}#{state}"));
    // Nothing reads stdout from here (a login's few lines fit in the pipe); it is kept open so
    // that the reader has not gone.
    let LoginRun { child, stdout } = run;
    (child, stdout)
}

fn text(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on our own, not yet reaped, child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
}

#[test]
fn a_slow_profile_lookup_says_what_it_waits_for() {
    let home = TempHome::new();
    let server = TokenServer::start();
    let stderr = home.path().join("stderr.txt");
    let (mut child, _stdout) = pasted(
        &home,
        &server,
        Duration::ZERO,
        Duration::from_secs(3),
        &stderr,
    );
    let told = wait_until(Duration::from_secs(5), || {
        text(&stderr).contains("Looking up the account's plan")
    });
    let status = child.wait().unwrap();
    let said = text(&stderr);
    assert!(told, "nothing said while the lookup took 3 s:\n{said}");
    assert!(said.contains("Ctrl-C saves it without the plan"), "{said}");
    assert_eq!(status.code(), Some(0), "{said}");
    assert_eq!(
        oauth(&home.read_creds())
            .get("subscriptionType")
            .and_then(|v| v.as_str()),
        Some("max"),
        "the plan the slow lookup gave is saved"
    );
}

#[test]
fn ctrl_c_during_the_profile_lookup_names_that_step() {
    let home = TempHome::new();
    let server = TokenServer::start();
    let stderr = home.path().join("stderr.txt");
    let (mut child, _stdout) = pasted(
        &home,
        &server,
        Duration::ZERO,
        Duration::from_secs(8),
        &stderr,
    );
    assert!(
        wait_until(Duration::from_secs(5), || !server
            .profile_requests()
            .is_empty()),
        "the lookup never came"
    );
    signal(&child, libc::SIGINT);
    let status = child.wait().unwrap();
    let said = text(&stderr);
    assert_eq!(status.code(), Some(130), "{said}");
    assert!(said.contains("profile lookup is cut short"), "{said}");
    assert!(
        !said.contains("waiting for the code exchange"),
        "the exchange is over, and is not named: {said}"
    );
    assert_eq!(
        home.read_creds()["claudeAiOauth"]["accessToken"].as_str(),
        Some(server.last_issued().access.as_str()),
        "the login is saved"
    );
}

#[test]
fn a_second_ctrl_c_says_the_new_login_is_lost_and_the_old_one_untouched() {
    let home = TempHome::new();
    home.write_creds(&Login::fresh().doc());
    let before = home.state();
    let server = TokenServer::start();
    let stderr = home.path().join("stderr.txt");
    let (mut child, _stdout) = pasted(
        &home,
        &server,
        Duration::from_secs(8),
        Duration::ZERO,
        &stderr,
    );
    assert!(
        wait_until(Duration::from_secs(5), || server.count() >= 1),
        "the exchange never came"
    );
    signal(&child, libc::SIGINT);
    assert!(
        wait_until(Duration::from_secs(3), || text(&stderr)
            .contains("waiting for the code exchange in flight")),
        "{}",
        text(&stderr)
    );
    let again = Instant::now();
    signal(&child, libc::SIGINT);
    let status = child.wait().unwrap();
    let said = text(&stderr);
    assert!(again.elapsed() < Duration::from_secs(2), "{said}");
    assert_eq!(status.code(), Some(130), "{said}");
    assert!(
        said.contains("the new login is lost")
            && said.contains("the login stored before, if any, is untouched"),
        "{said}"
    );
    assert!(!said.contains("the login may be lost"), "{said}");
    let after = FileState::of(&home.creds_path());
    assert_eq!(after.bytes, before.bytes, "the stored login is untouched");
}
