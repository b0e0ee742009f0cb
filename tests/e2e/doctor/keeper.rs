//! `keeper` against real daemons: the one live daemon keeping a login is named by its pid; a
//! second on the same login is a warning naming both; a killed daemon keeps nothing, and with
//! none left doctor warns that Claude Code alone will refresh the login (and race).

use std::time::Duration;

use claude_tokend_e2e::*;
use serde_json::Value;

use super::support::*;

fn keeper(home: &TempHome) -> Value {
    Report::run(doctor(home, &["--json", "--offline"]))
        .check("keeper")
        .clone()
}

fn says(c: &Value, result: &str, needle: &str) -> bool {
    c["result"] == result && c["detail"].as_str().is_some_and(|d| d.contains(needle))
}

#[test]
fn one_daemon_is_named_a_second_is_a_warning_and_killed_ones_keep_nothing() {
    let home = TempHome::new();
    home.write_creds(&Login::fresh().doc());
    let server = TokenServer::start();
    let first = Cmd::new(&home).server(&server).spawn();
    let a = first.id();
    let mut last = Value::Null;
    let named = wait_until(Duration::from_secs(5), || {
        last = keeper(&home);
        says(
            &last,
            "ok",
            &format!("kept fresh by claude-tokend pid {a}; not a service"),
        )
    });
    assert!(named, "doctor never named the daemon (pid {a}): {last:#}");
    let second = Cmd::new(&home).server(&server).spawn();
    let b = second.id();
    let both = wait_until(Duration::from_secs(5), || {
        last = keeper(&home);
        says(
            &last,
            "warn",
            &format!("2 claude-tokend daemons keep this login (pids {a}, {b})"),
        )
    });
    assert!(both, "doctor never named both daemons ({a}, {b}): {last:#}");
    assert!(
        last["fix"].as_str().unwrap().contains(&format!("kill {b}")),
        "it says which to stop: {last:#}"
    );
    for d in [first, second] {
        send_signal(&d, libc::SIGKILL);
        let _ = d.wait();
    }
    let c = keeper(&home);
    assert!(
        says(
            &c,
            "warn",
            "no claude-tokend daemon keeps this login fresh: Claude Code alone"
        ),
        "a dead daemon is no keeper: {c:#}"
    );
    assert_eq!(server.count(), 0, "nothing was sent");
}
