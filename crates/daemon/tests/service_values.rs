//! `claude-tokend service install` command lines: the usage errors (exit 2), and values that
//! must reach the service file exactly (quotes, `$`, `%`) or cannot be put there at all, against
//! the fake `systemctl`/`launchctl` of `common`.

mod common;

use common::*;

// ---------------------------------------------------------------------------------------------
// bad usage

#[test]
fn bad_service_command_lines_exit_2() {
    let mut env = Env::systemd();
    env.run(&["service"]).code(2);
    env.run(&["service", "install", "--no-such-flag"]).code(2);
    env.run(&["service", "install", "--credentials", "a\nb"])
        .code(2);
    env.set("CLAUDE_TOKEND_SERVICE_MANAGER", "upstart");
    env.run(&["service", "install"]).code(2);
    env.set("CLAUDE_TOKEND_SERVICE_MANAGER", "launchd");
    let run = env.run(&["service", "install", "--sandbox"]).code(2);
    assert!(run.err.contains("--sandbox"), "{}", run.err);
    env.unset("HOME");
    let run = env.run(&["service", "install"]).code(2);
    assert!(run.err.contains("HOME"), "{}", run.err);
    assert!(env.take_calls().is_empty());
    assert!(!env.unit_path().exists() && !env.agent_path().exists());
}

// ---------------------------------------------------------------------------------------------
// values carried exactly

/// The most natural notify command, `notify-send "Claude login" "$CLAUDE_TOKEND_MESSAGE"`,
/// installs, and reads back exactly as systemd reads `Environment=`: `"` and `\` escaped in
/// systemd's quoting, `%` doubled, `$` as it is (systemd does not expand it there). The unit
/// verifies cleanly where systemd-analyze exists.
#[test]
fn systemd_carries_a_notify_command_with_quotes_backslashes_and_percent() {
    let env = Env::systemd();
    let commands = [
        r#"notify-send "Claude login" "$CLAUDE_TOKEND_MESSAGE""#,
        "printf '%s\\n' \"$CLAUDE_TOKEND_EVENT\"\t>> 'C:\\logs\\50% \"done\"'",
        r#"echo \"#,
    ];
    for cmd in commands {
        env.run(&["service", "install", "--force", "--notify-cmd", cmd])
            .ok();
        let unit = read(&env.unit_path());
        let vars = unit_environment(&unit);
        let got: Vec<&str> = vars
            .iter()
            .filter(|(k, _)| k == "CLAUDE_TOKEND_NOTIFY_CMD")
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(got, [cmd], "{unit}");
        if let Some(complaints) = systemd_verify(&env, &env.unit_path()) {
            assert!(
                complaints.is_empty(),
                "systemd-analyze: {complaints}\n{unit}"
            );
        }
    }
}

/// Logins carried on `ExecStart=` keep a `$`, a `%`, a `"` and a `\` exactly: systemd would
/// expand `${USER}` there (even inside quotes) unless written `$${USER}`.
#[test]
fn systemd_exec_start_carries_dollars_and_quotes_exactly() {
    let env = Env::systemd();
    let odd = env.root.join(r#"d${USER}x 50% "q" \b"#);
    let a = odd.join("a.json").display().to_string();
    let b = odd.join("b").display().to_string();
    env.run(&[
        "service",
        "install",
        "--credentials",
        &a,
        "--config-dir",
        &b,
    ])
    .ok();
    let unit = read(&env.unit_path());
    assert_eq!(
        unit_exec_start(&unit),
        [
            program(),
            "--credentials".into(),
            a,
            "--config-dir".into(),
            b
        ],
        "{unit}"
    );
    if let Some(complaints) = systemd_verify(&env, &env.unit_path()) {
        assert!(
            complaints.is_empty(),
            "systemd-analyze: {complaints}\n{unit}"
        );
    }

    // The program itself in such a directory: its path is literal to systemd (no variable is
    // expanded in ExecStart='s first word, so a `$$` there would stay two).
    let dir = env.root.join("bin $1 50%");
    std::fs::create_dir_all(&dir).unwrap();
    let linked = dir.join("claude-tokend");
    std::fs::hard_link(BIN, &linked)
        .or_else(|_| std::fs::copy(BIN, &linked).map(|_| ()))
        .unwrap();
    let run = std::process::Command::new(&linked)
        .args([
            "service",
            "install",
            "--force",
            "--credentials",
            "/a$b",
            "--config-dir",
            "/c",
        ])
        .env_clear()
        .env("HOME", env.home())
        .env("XDG_CONFIG_HOME", env.root.join("xdg"))
        .env("CLAUDE_TOKEND_SERVICE_MANAGER", "systemd")
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let unit = read(&env.unit_path());
    let argv = unit_exec_start(&unit);
    assert_eq!(argv[0], linked.display().to_string(), "{unit}");
    assert_eq!(
        argv[1..],
        ["--credentials", "/a$b", "--config-dir", "/c"],
        "{unit}"
    );
    if let Some(complaints) = systemd_verify(&env, &env.unit_path()) {
        assert!(
            complaints.is_empty(),
            "systemd-analyze: {complaints}\n{unit}"
        );
    }
}

/// What no service file can hold (a newline or another control character but tab, U+FFFE,
/// U+FFFF) is refused with exit 2 before anything is written, for systemd and launchd alike;
/// a tab is carried.
#[test]
fn values_no_service_file_can_hold_are_refused_before_anything_is_written() {
    for manager in ["systemd", "launchd"] {
        for bad in [
            "a\nb",
            "a\rb",
            "a\u{1b}[31mb",
            "a\u{7f}b",
            "a\u{fffe}b",
            "a\u{ffff}b",
        ] {
            let env = match manager {
                "systemd" => Env::systemd(),
                _ => Env::new(manager),
            };
            for args in [
                vec!["service", "install", "--notify-cmd", bad],
                vec![
                    "service",
                    "install",
                    "--credentials",
                    bad,
                    "--config-dir",
                    "/x",
                ],
                vec!["service", "install", "--user-agent", bad],
            ] {
                let run = env.run(&args).code(2);
                // A User-Agent with a control character is a bad setting for every command,
                // refused as such before `service install` looks at it.
                let refused_as_setting =
                    args[2] == "--user-agent" && run.err.contains("control character");
                assert!(
                    run.err.contains("service file") || refused_as_setting,
                    "{manager} {bad:?}: {}",
                    run.err
                );
                assert!(
                    !env.unit_path().exists() && !env.agent_path().exists(),
                    "{manager}: written anyway"
                );
            }
            assert!(env.take_calls().is_empty());
        }
    }
    let env = Env::systemd();
    env.run(&["service", "install", "--notify-cmd", "a\tb"])
        .ok();
    let vars = unit_environment(&read(&env.unit_path()));
    assert!(vars.contains(&("CLAUDE_TOKEND_NOTIFY_CMD".into(), "a\tb".into())));
}

/// Every Unicode noncharacter (U+FDD0–U+FDEF, and the last two code points of each plane)
/// is refused with exit 2 before anything is written, for systemd and launchd alike: systemd
/// drops a line holding one ("String is not UTF-8 clean, ignoring assignment"), so the
/// service would run without the setting or the login.
#[test]
fn noncharacters_are_refused_for_both_managers() {
    for bad in ["\u{fdd0}", "\u{fdef}", "\u{1fffe}", "\u{10ffff}"] {
        for manager in ["systemd", "launchd"] {
            let env = match manager {
                "systemd" => Env::systemd(),
                _ => Env::new(manager),
            };
            let dir = format!("/srv/a{bad}b");
            for args in [
                vec!["service", "install", "--notify-cmd", &dir],
                vec!["service", "install", "--config-dir", &dir],
                vec![
                    "service",
                    "install",
                    "--credentials",
                    &dir,
                    "--config-dir",
                    "/x",
                ],
            ] {
                let run = env.run(&args).code(2);
                assert!(
                    run.err.contains("service file"),
                    "{manager} {bad:?}: {}",
                    run.err
                );
                assert!(
                    !env.unit_path().exists() && !env.agent_path().exists(),
                    "{manager} {bad:?}: written anyway"
                );
            }
            // The sandbox's ReadWritePaths= too (CLAUDE_CONFIG_DIR is carried there).
            if manager == "systemd" {
                let mut env = env;
                env.set("CLAUDE_CONFIG_DIR", &dir);
                env.run(&["service", "install", "--sandbox"]).code(2);
                assert!(!env.unit_path().exists() && !env.sandbox_path().exists());
            }
        }
    }

    // What systemd says of one, where it can be asked: the assignment is dropped.
    let env = Env::systemd();
    let unit = env.root.join("hand.service");
    std::fs::write(
        &unit,
        "[Service]\nExecStart=/bin/true\nEnvironment=\"A=\u{10ffff}\"\n",
    )
    .unwrap();
    if let Some(complaints) = systemd_verify(&env, &unit) {
        assert!(complaints.contains("not UTF-8 clean"), "{complaints}");
    }
}
