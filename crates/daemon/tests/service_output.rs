//! Where `service`'s output goes does not change what it does: a reader that has gone (`… |
//! head -1`) ends nothing but the output, and a terminal with `stty tostop` does not stop the
//! `systemctl`/`launchctl` calls (run in process groups of their own, they would be stopped by
//! SIGTTOU the moment they wrote to it).

use std::time::Duration;

mod common;

use common::*;

/// No panic, no backtrace: a closed pipe is no failure of the command.
#[track_caller]
fn quiet(run: &Run) {
    for words in ["panicked", "Broken pipe", "RUST_BACKTRACE"] {
        assert!(!run.err.contains(words), "{words:?} in:\n{}", run.err);
    }
}

#[test]
fn a_closed_stdout_drops_the_output_and_the_work_goes_on() {
    let mut env = Env::systemd();
    env.set("FAKE_RUNNING", "1");
    let run = env
        .run_stdout_closed(&["service", "install", "--now", "--sandbox"])
        .ok();
    quiet(&run);
    assert!(env.unit_path().is_file() && env.sandbox_path().is_file());
    assert_eq!(
        env.take_calls(),
        [
            "systemctl --user daemon-reload",
            "systemctl --user enable --now claude-tokend.service"
        ],
        "every step is taken"
    );
    let run = env.run_stdout_closed(&["service", "status"]).ok();
    quiet(&run);
    let run = env.run_stdout_closed(&["service", "uninstall"]).ok();
    quiet(&run);
    assert!(!env.unit_path().exists() && !env.sandbox_path().exists());
    assert_eq!(
        env.take_calls().last().map(String::as_str),
        Some("systemctl --user daemon-reload")
    );

    let mut env = Env::new("launchd");
    env.set("FAKE_RUNNING", "1");
    let run = env.run_stdout_closed(&["service", "install", "--now"]).ok();
    quiet(&run);
    assert!(env.agent_path().is_file());
    quiet(&env.run_stdout_closed(&["service", "status"]).ok());
    quiet(&env.run_stdout_closed(&["service", "uninstall"]).ok());
    assert!(!env.agent_path().exists());
}

#[test]
fn a_terminal_with_tostop_does_not_stop_the_managers_calls() {
    require_seams();
    let mut env = Env::systemd();
    // Long enough that a stopped call is told from one that ran.
    env.set("CLAUDE_TOKEND_TEST_SERVICE_CALL_MS", "4000")
        .set("FAKE_RUNNING", "1");
    let Some(run) = env.run_in_terminal("stty tostop", &["service", "install", "--now"]) else {
        return;
    };
    let run = run.ok();
    assert!(run.took < Duration::from_secs(3), "took {:?}", run.took);
    // What the manager said reaches the terminal all the same.
    assert!(run.out.contains("Created symlink (fake)"), "{}", run.out);
    env.take_calls();

    let run = env
        .run_in_terminal("stty tostop", &["service", "status"])
        .unwrap()
        .ok();
    assert!(run.took < Duration::from_secs(3), "took {:?}", run.took);
    assert!(run.out.contains("Active: active (running)"), "{}", run.out);
    env.unset("FAKE_RUNNING");
    let run = env
        .run_in_terminal("stty tostop", &["service", "status"])
        .unwrap()
        .code(1);
    assert!(run.out.contains("Active: inactive (dead)"), "{}", run.out);
    assert!(run.out.contains("not running"), "{}", run.out);

    let mut env = Env::new("launchd");
    env.set("CLAUDE_TOKEND_TEST_SERVICE_CALL_MS", "4000")
        .set("FAKE_RUNNING", "1");
    env.run(&["service", "install"]).ok();
    let run = env
        .run_in_terminal("stty tostop", &["service", "status"])
        .unwrap()
        .ok();
    assert!(run.took < Duration::from_secs(3), "took {:?}", run.took);
    assert!(run.out.contains("state = running"), "{}", run.out);
}
