//! "Another daemon is named" (CONTRACT.md, "Interrupted, slow or absent"): a daemon records
//! itself as the keeper of each login it keeps; `status` says which process keeps it
//! (`"keeperPid"`); a second daemon on the same login warns naming the first's pid; a daemon
//! that stopped, cleanly or not, keeps nothing.

use std::time::Duration;

use claude_tokend_e2e::*;
use serde_json::{Value, json};

fn keeper_pid(home: &TempHome) -> Value {
    let out = Cmd::new(home).args(["status", "--json"]).run();
    let v: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("status --json is not JSON ({e})\n{}", out.context()));
    v["keeperPid"].clone()
}

fn lock_file(home: &TempHome) -> String {
    std::fs::read_to_string(home.claude_dir().join(".credentials.json.lock")).unwrap_or_default()
}

#[test]
fn status_names_the_live_daemon_and_no_one_once_it_stopped() {
    let home = TempHome::new();
    home.write_creds(&Login::fresh().doc());
    assert_eq!(keeper_pid(&home), Value::Null, "no daemon yet");
    let d = Cmd::new(&home).spawn();
    let pid = json!(d.id());
    assert!(
        wait_until(Duration::from_secs(5), || keeper_pid(&home) == pid),
        "status never named the daemon (pid {pid}); lock file:\n{}",
        lock_file(&home)
    );
    let text = Cmd::new(&home).arg("status").run();
    text.expect_code(0).check(
        text.stdout.contains(&format!("pid {pid}")),
        "the text names the pid",
    );
    stop(d);
    assert_eq!(
        keeper_pid(&home),
        Value::Null,
        "a stopped daemon keeps nothing"
    );
    assert!(
        !lock_file(&home).contains("keeper"),
        "a clean stop removes its record:\n{}",
        lock_file(&home)
    );
}

#[test]
fn a_killed_daemon_keeps_nothing_and_the_next_one_takes_its_place_silently() {
    let home = TempHome::new();
    home.write_creds(&Login::fresh().doc());
    let d = Cmd::new(&home).spawn();
    let first = json!(d.id());
    assert!(wait_until(Duration::from_secs(5), || keeper_pid(&home) == first));
    send_signal(&d, libc::SIGKILL);
    let _ = d.wait();
    assert!(
        lock_file(&home).contains("keeper"),
        "kill -9 leaves its line"
    );
    assert_eq!(
        keeper_pid(&home),
        Value::Null,
        "but a dead pid is not a keeper"
    );
    let next = Cmd::new(&home).spawn();
    let pid = json!(next.id());
    assert!(wait_until(Duration::from_secs(5), || keeper_pid(&home) == pid));
    let out = stop(next);
    out.check(
        !out.stderr.contains("another claude-tokend"),
        "a dead daemon's record is no reason to warn",
    );
}

#[test]
fn a_second_daemon_on_the_same_login_warns_naming_the_first() {
    let home = TempHome::new();
    home.write_creds(&Login::fresh().doc());
    let first = Cmd::new(&home).spawn();
    let first_pid = json!(first.id());
    assert!(wait_until(Duration::from_secs(5), || keeper_pid(&home) == first_pid));
    let second = Cmd::new(&home).spawn();
    let second_pid = second.id();
    assert!(wait_until(Duration::from_secs(5), || lock_file(&home)
        .contains(&format!("keeper {second_pid} "))));
    let out = stop(second);
    out.expect_stderr_contains(&format!("another claude-tokend (pid {first_pid})"));
    assert_eq!(keeper_pid(&home), first_pid, "the first still keeps it");
    let out = stop(first);
    out.check(
        !out.stderr.contains("another claude-tokend"),
        "the first daemon was alone when it started",
    );
}

#[test]
fn a_daemon_waiting_for_a_first_login_records_itself_once_the_login_appears() {
    let home = TempHome::new();
    let d = Cmd::new(&home).spawn();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !home.claude_dir().join(".credentials.json.lock").exists(),
        "no lock file is made for a login that does not exist"
    );
    home.write_creds(&Login::fresh().doc());
    let pid = json!(d.id());
    assert!(
        wait_until(Duration::from_secs(5), || keeper_pid(&home) == pid),
        "lock file:\n{}",
        lock_file(&home)
    );
    stop(d);
}

#[test]
fn a_record_lost_with_the_lock_file_is_made_again_and_a_malformed_login_is_kept_too() {
    let home = TempHome::new();
    home.write_raw(b"{\"claudeAiOauth\": {\"accessToken\": 5}}");
    let d = Cmd::new(&home).spawn();
    let pid = json!(d.id());
    assert!(
        wait_until(Duration::from_secs(5), || lock_file(&home)
            .contains(&format!("keeper {pid} "))),
        "a daemon waiting for a malformed login still says it keeps it:\n{}",
        lock_file(&home)
    );
    home.write_creds(&Login::fresh().doc());
    std::fs::remove_file(home.claude_dir().join(".credentials.json.lock")).unwrap();
    send_signal(&d, libc::SIGHUP);
    assert!(
        wait_until(Duration::from_secs(5), || keeper_pid(&home) == pid),
        "the record came back after the lock file was removed:\n{}",
        lock_file(&home)
    );
    stop(d);
}
