//! A `systemctl` or `launchctl` that never answers (a stuck user bus, a wedged launchd): every
//! call `service` makes is bounded (30 s; `CLAUDE_TOKEND_TEST_SERVICE_CALL_MS` shortens it in
//! debug builds), the hung command and whatever it started are killed, and the user is told
//! exactly what to run by hand. Needs the test seams (`cargo test --workspace`).

use std::time::Duration;

mod common;

use common::*;

/// A fake manager that hangs on `arg`, with a bound of 300 ms.
fn hanging(manager: &str, arg: &str) -> Env {
    require_seams();
    let mut env = if manager == "systemd" {
        Env::systemd()
    } else {
        Env::new(manager)
    };
    env.set("FAKE_HANG", arg)
        .set("CLAUDE_TOKEND_TEST_SERVICE_CALL_MS", "300");
    env
}

/// The fake's hung children (their pids, as it recorded them) are all gone, soon.
#[track_caller]
fn hung_children_are_killed(env: &Env) {
    let pids = std::fs::read_to_string(env.root.join("calls.log.hung")).expect("a hung call");
    for pid in pids.lines().map(|p| p.parse::<u32>().unwrap()) {
        assert!(
            wait_until(Duration::from_secs(3), || process_gone(pid)),
            "the hung call's child {pid} still runs"
        );
    }
    let _ = std::fs::remove_file(env.root.join("calls.log.hung"));
}

#[test]
fn a_hung_systemctl_is_stopped_and_the_user_told_what_to_run() {
    let env = hanging("systemd", "daemon-reload");
    let run = env.run(&["service", "install", "--now"]).code(1);
    assert!(run.took < Duration::from_secs(5), "took {:?}", run.took);
    assert!(env.unit_path().is_file(), "the unit is written before");
    for words in [
        "`systemctl --user daemon-reload` did not finish within 300 ms",
        "run by hand",
        "\n  systemctl --user daemon-reload\n  systemctl --user enable --now claude-tokend.service\n",
    ] {
        assert!(run.err.contains(words), "no {words:?} in:\n{}", run.err);
    }
    hung_children_are_killed(&env);

    // Stopping it for uninstall: nothing is removed, and the steps are spelled out.
    let mut env = env;
    env.set("FAKE_HANG", "disable");
    let run = env.run(&["service", "uninstall"]).code(1);
    assert!(env.unit_path().is_file(), "{}", run.err);
    let unit = env.unit_path().display().to_string();
    for words in [
        "`systemctl --user disable --now claude-tokend.service` did not finish",
        "\n  systemctl --user disable --now claude-tokend.service\n",
        &format!("\n  rm -f {unit}\n"),
        "\n  systemctl --user daemon-reload\n",
    ] {
        assert!(run.err.contains(words), "no {words:?} in:\n{}", run.err);
    }
    hung_children_are_killed(&env);

    // Asking for the status: it could not be asked (69), not "not running".
    env.set("FAKE_HANG", "status");
    let run = env.run(&["service", "status"]).code(69);
    assert!(run.err.contains("did not finish within"), "{}", run.err);
    assert!(!run.err.contains("not running"), "{}", run.err);
    hung_children_are_killed(&env);
}

#[test]
fn a_hung_launchctl_is_stopped_and_the_user_told_what_to_run() {
    let env = hanging("launchd", "print");
    let uid = uid(&env);
    let run = env.run(&["service", "install", "--now"]).code(1);
    assert!(run.took < Duration::from_secs(5), "took {:?}", run.took);
    assert!(env.agent_path().is_file());
    let bootstrap = format!(
        "launchctl bootstrap gui/{uid} {}",
        env.agent_path().display()
    );
    for words in [
        format!("`launchctl print gui/{uid}/{LABEL}` did not finish within 300 ms"),
        format!("\n  {bootstrap}\n"),
    ] {
        assert!(run.err.contains(&words), "no {words:?} in:\n{}", run.err);
    }
    hung_children_are_killed(&env);

    let run = env.run(&["service", "uninstall"]).code(1);
    assert!(env.agent_path().is_file(), "nothing removed:\n{}", run.err);
    assert!(
        run.err
            .contains(&format!("\n  launchctl bootout gui/{uid}/{LABEL}\n")),
        "{}",
        run.err
    );
    hung_children_are_killed(&env);

    let run = env.run(&["service", "status"]).code(69);
    assert!(run.err.contains("did not finish within"), "{}", run.err);
    hung_children_are_killed(&env);
}

/// Starts `args` with the fake hanging on `arg` (and a bound far away), after `first` (run
/// as usual), and waits until the hung call runs.
fn start_hung(manager: &str, arg: &str, first: &[&str], args: &[&str]) -> (Env, Running) {
    let mut env = hanging(manager, arg);
    env.set("CLAUDE_TOKEND_TEST_SERVICE_CALL_MS", "60000");
    if !first.is_empty() {
        env.run(first).ok();
    }
    let running = env.spawn(args);
    let hung = env.root.join("calls.log.hung");
    assert!(
        wait_until(Duration::from_secs(5), || hung.exists()),
        "the call never ran"
    );
    (env, running)
}

#[test]
fn a_signal_during_a_hung_call_ends_it_and_says_what_to_run() {
    // Ctrl-C while `enable --now` hangs: the call (in a process group of its own, which the
    // terminal's SIGINT does not reach) is killed, and the user told what is done.
    let (env, running) = start_hung("systemd", "enable", &[], &["service", "install", "--now"]);
    running.signal(libc::SIGINT);
    let run = running.finish().code(130);
    let unit = env.unit_path().display().to_string();
    for words in [
        "SIGINT: stopped `systemctl --user enable --now claude-tokend.service`",
        &format!("{unit} is in place"),
        "\n  systemctl --user enable --now claude-tokend.service\n",
    ] {
        assert!(run.err.contains(words), "no {words:?} in:\n{}", run.err);
    }
    hung_children_are_killed(&env);

    // SIGTERM while uninstall stops the service: nothing is removed, the rest spelled out.
    let (env, running) = start_hung(
        "systemd",
        "disable",
        &["service", "install"],
        &["service", "uninstall"],
    );
    running.signal(libc::SIGTERM);
    let run = running.finish().code(143);
    assert!(run.err.contains("SIGTERM: stopped"), "{}", run.err);
    assert!(run.err.contains("nothing was removed"), "{}", run.err);
    assert!(env.unit_path().is_file());
    assert!(
        run.err.contains("\n  systemctl --user daemon-reload\n"),
        "{}",
        run.err
    );
    hung_children_are_killed(&env);

    // launchd's question whether the agent is loaded, the same way.
    let (env, running) = start_hung("launchd", "print", &[], &["service", "install", "--now"]);
    running.signal(libc::SIGINT);
    let run = running.finish().code(130);
    assert!(
        run.err.contains("SIGINT: stopped `launchctl print"),
        "{}",
        run.err
    );
    assert!(run.err.contains("launchctl bootstrap"), "{}", run.err);
    assert!(env.agent_path().is_file());
    hung_children_are_killed(&env);
}
