//! What the hostile review of the first mirror implementation found, each reproduced through
//! the built binary: a consumer's own login in its mirror must not make the daemon spin; a
//! link the consumer plants above its mirror directory (when it owns the parent too) is not
//! written through; a source moved away and back for a moment is not a logout for the
//! mirrors or `--mirror-cmd`; a failing `--mirror-cmd` of one login does not hold up another
//! login's refresh in a one-shot command.

use std::fs;
use std::os::unix::fs::symlink;
use std::time::{Duration, Instant};

use claude_tokend_e2e::*;
use serde_json::{Value, json};

/// The CPU time (user + system) a process has used, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/<pid>/stat");
    // The fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')').expect("a stat line") + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

#[test]
fn a_consumers_own_login_in_its_mirror_is_skipped_without_spinning() {
    let home = TempHome::new();
    home.write_creds(&Login::fresh().doc());
    let dir = home.path().join("mirror");
    let d = Cmd::new(&home).arg("--mirror").arg(&dir).spawn();
    assert!(wait_until(Duration::from_secs(5), || mirror_access(&dir).is_some()));
    let theirs =
        json!({"claudeAiOauth": {"accessToken": "x", "refreshToken": "sk-ant-ort01-theirs"}});
    fs::write(mirror_path(&dir), theirs.to_string()).unwrap();
    send_signal(&d, libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(300));
    let before = cpu_ticks(d.id());
    std::thread::sleep(Duration::from_millis(1500));
    let used = cpu_ticks(d.id()) - before;
    let out = stop(d);
    // Spinning, it used about 150 ticks in that time; idle, none.
    out.check(used <= 10, format!("the daemon used {used} ticks in 1.5 s"))
        .expect_stderr_contains("holds a refresh token");
    let now: Value = serde_json::from_slice(&fs::read(mirror_path(&dir)).unwrap()).unwrap();
    out.check_eq("the consumer's login", now, theirs);
}

#[test]
fn a_link_planted_above_the_mirror_directory_is_not_written_through() {
    let home = TempHome::new();
    home.write_creds(&Login::fresh().doc());
    let mirrors = home.path().join("mirrors");
    fs::create_dir(&mirrors).unwrap();
    let dir = mirrors.join("claude");
    let victim = home.path().join("victim");
    fs::create_dir(&victim).unwrap();
    let d = Cmd::new(&home).arg("--mirror").arg(&dir).spawn();
    assert!(wait_until(Duration::from_secs(5), || mirror_access(&dir).is_some()));
    // The consumer owns `mirrors` too: it swaps it for a link to another directory.
    fs::rename(&mirrors, home.path().join("old")).unwrap();
    symlink(&victim, &mirrors).unwrap();
    send_signal(&d, libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(800));
    let out = stop(d);
    out.check(
        fs::read_dir(&victim).unwrap().next().is_none(),
        "nothing was written through the link",
    )
    .expect_stderr_contains("symlink on the way");
}

#[test]
fn a_source_moved_away_and_back_is_not_a_logout_for_the_mirrors() {
    let home = TempHome::new();
    home.write_creds(&Login::fresh().doc());
    let dir = home.path().join("mirror");
    let events = home.path().join("events");
    let cmd = format!("echo \"$CLAUDE_TOKEND_EVENT\" >> '{}'", events.display());
    let d = Cmd::new(&home)
        .arg("--mirror")
        .arg(&dir)
        .args(["--mirror-cmd", &cmd])
        .spawn();
    assert!(wait_until(Duration::from_secs(5), || mirror_access(&dir)
        .is_some()
        && fs::read_to_string(&events)
            .is_ok_and(|e| e.contains("update"))));
    let creds = home.creds_path();
    let aside = home.path().join("aside.json");
    fs::rename(&creds, &aside).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    fs::rename(&aside, &creds).unwrap();
    let until = Instant::now() + Duration::from_millis(1500);
    let mut lost = false;
    while Instant::now() < until {
        lost |= mirror_access(&dir).is_none();
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = stop(d);
    out.check(!lost, "the mirror never lost the login")
        .check_eq(
            "the command's events",
            fs::read_to_string(&events).unwrap(),
            "update\n".to_owned(),
        );
}

#[test]
fn a_slow_mirror_command_of_one_login_does_not_hold_up_the_next_logins_refresh() {
    let home = TempHome::new();
    let (a, b) = (home.path().join("a"), home.path().join("b"));
    let (la, lb) = (Login::due(), Login::due());
    write_creds_at(&a.join(".credentials.json"), &la.doc());
    write_creds_at(&b.join(".credentials.json"), &lb.doc());
    let server = TokenServer::for_login(&la);
    server.accept_refresh(&lb.refresh);
    let started = Instant::now();
    let d = Cmd::new(&home)
        .server(&server)
        .args(["refresh", "--mirror-cmd", "sleep 3", "--config-dir"])
        .arg(&a)
        .arg("--config-dir")
        .arg(&b)
        .spawn();
    assert!(
        wait_until(Duration::from_secs(10), || server.count() == 2),
        "both logins were refreshed"
    );
    let both = started.elapsed();
    let out = d.wait();
    out.expect_code(0).check(
        both < Duration::from_secs(3),
        format!("the second refresh waited for the first login's command ({both:?})"),
    );
}

#[test]
fn once_reads_a_gone_source_again_before_its_mirrors_lose_the_login() {
    let home = TempHome::new();
    home.write_creds(&Login::fresh().doc());
    let dir = home.path().join("mirror");
    Cmd::new(&home)
        .args(["--once", "--mirror"])
        .arg(&dir)
        .run()
        .expect_code(0);
    assert!(mirror_access(&dir).is_some());
    let creds = home.creds_path();
    let aside = home.path().join("aside.json");
    fs::rename(&creds, &aside).unwrap();
    let run = Cmd::new(&home)
        .args(["--once", "--mirror"])
        .arg(&dir)
        .spawn();
    // Back while the run looks again (half a second after it found the file gone).
    std::thread::sleep(Duration::from_millis(250));
    fs::rename(&aside, &creds).unwrap();
    let out = run.wait();
    out.check(
        mirror_access(&dir).is_some(),
        "the mirror kept the login of a source that came back",
    );
}

#[test]
fn a_mirror_that_is_a_symlink_is_warned_about_at_start_and_never_written_through() {
    let home = TempHome::new();
    home.write_creds(&Login::fresh().doc());
    let real = home.path().join("real");
    fs::create_dir(&real).unwrap();
    let link = home.path().join("link");
    symlink(&real, &link).unwrap();
    let out = Cmd::new(&home)
        .args(["--once", "--mirror"])
        .arg(&link)
        .run();
    out.expect_code(0)
        .expect_stderr_contains("is a symlink")
        .check(
            fs::read_dir(&real).unwrap().next().is_none(),
            "nothing written through the link",
        );
}
