//! `claude-tokend service install|uninstall|status` on the systemd code path, against the fake
//! `systemctl` of `common` (usage errors and exact values are in service_values.rs).

mod common;

use common::*;

// ---------------------------------------------------------------------------------------------
// systemd

#[test]
fn systemd_install_renders_the_unit_and_runs_nothing_without_now() {
    let mut env = Env::systemd();
    let config = env.root.join("state/claude").display().to_string();
    env.set("CLAUDE_CONFIG_DIR", &config);
    // A relative --credentials is made absolute: the service does not run in this directory.
    let run = env
        .run(&["service", "install", "--credentials", "my creds/c.json"])
        .ok();
    let unit = read(&env.unit_path());
    let exec = program();
    assert!(
        has_line(&unit, &format!("ExecStart={exec}"))
            || has_line(&unit, &format!("ExecStart=\"{exec}\"")),
        "ExecStart is not {exec}:\n{unit}"
    );
    let creds = env.root.join("my creds/c.json").display().to_string();
    assert!(
        has_line(
            &unit,
            &format!("Environment=\"CLAUDE_TOKEND_CREDENTIALS={creds}\"")
        ),
        "{unit}"
    );
    assert!(
        has_line(&unit, &format!("Environment=CLAUDE_CONFIG_DIR={config}")),
        "{unit}"
    );
    // Defaults are not pinned into the unit.
    assert!(!unit.contains("CLAUDE_TOKEND_TOKEN_URL"), "{unit}");
    for line in [
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
        "UMask=0077",
        "WantedBy=default.target",
    ] {
        assert!(has_line(&unit, line), "unit lacks {line}:\n{unit}");
    }
    assert!(!unit.contains("%h/.cargo"), "the placeholder path was left");
    assert!(env.take_calls().is_empty(), "no --now: no systemctl calls");
    assert!(!env.sandbox_path().exists(), "no --sandbox: no drop-in");
    assert!(
        run.out
            .contains(&format!("Wrote: {}", env.unit_path().display())),
        "{}",
        run.out
    );
    assert!(
        run.out
            .contains("systemctl --user enable --now claude-tokend.service"),
        "says how to start it:\n{}",
        run.out
    );
    assert!(
        run.out.contains("journalctl --user -u claude-tokend -f"),
        "{}",
        run.out
    );
    // Nothing under ~/.config when XDG_CONFIG_HOME says elsewhere.
    assert!(!env.home().join(".config").exists());
}

#[test]
fn systemd_install_carries_the_store_and_claude_codes_securestorage_dir() {
    let env = Env::systemd();
    env.run(&["service", "install"]).ok();
    let unit = read(&env.unit_path());
    assert!(
        !unit.contains("CLAUDE_TOKEND_STORE"),
        "auto is the default:\n{unit}"
    );
    assert!(!unit.contains("CLAUDE_SECURESTORAGE_CONFIG_DIR"), "{unit}");

    let mut env = Env::systemd();
    let dir = env.root.join("secure").display().to_string();
    env.set("CLAUDE_SECURESTORAGE_CONFIG_DIR", &dir);
    env.run(&["service", "install", "--store", "keychain", "--force"])
        .ok();
    let unit = read(&env.unit_path());
    assert!(
        has_line(&unit, "Environment=CLAUDE_TOKEND_STORE=keychain"),
        "{unit}"
    );
    assert!(
        has_line(
            &unit,
            &format!("Environment=CLAUDE_SECURESTORAGE_CONFIG_DIR={dir}")
        ),
        "{unit}"
    );
}

#[test]
fn systemd_install_carries_every_login() {
    // Config directories only: one variable, absolute, in order.
    let env = Env::systemd();
    env.run(&[
        "service",
        "install",
        "--config-dir",
        "work",
        "--config-dir",
        "/srv/personal",
    ])
    .ok();
    let unit = read(&env.unit_path());
    let work = env.root.join("work").display().to_string();
    assert!(
        has_line(
            &unit,
            &format!("Environment=CLAUDE_TOKEND_CONFIG_DIRS={work}:/srv/personal")
        ),
        "{unit}"
    );
    // A file among them: the logins go on the command line, in order.
    let env = Env::systemd();
    env.run(&[
        "service",
        "install",
        "--credentials",
        "/srv/a.json",
        "--config-dir",
        "/srv/b",
    ])
    .ok();
    let unit = read(&env.unit_path());
    let exec = program();
    assert!(
        unit.lines().any(|l| l.starts_with("ExecStart=")
            && l.contains(exec.as_str())
            && l.ends_with(" --credentials /srv/a.json --config-dir /srv/b")),
        "{unit}"
    );
    assert!(!unit.contains("CLAUDE_TOKEND_CONFIG_DIRS"), "{unit}");
    assert!(!unit.contains("CLAUDE_TOKEND_CREDENTIALS"), "{unit}");
}

#[test]
fn systemd_install_honours_xdg_config_home_only_when_absolute() {
    for xdg in [None, Some("relative/config")] {
        let mut env = Env::new("systemd");
        match xdg {
            Some(v) => env.set("XDG_CONFIG_HOME", v),
            None => env.unset("XDG_CONFIG_HOME"),
        };
        env.run(&["service", "install"]).ok();
        let path = env.home().join(".config/systemd/user").join(UNIT);
        assert!(
            path.is_file(),
            "XDG_CONFIG_HOME={xdg:?}: no {}",
            path.display()
        );
        assert!(!env.root.join("relative").exists());
    }
}

#[test]
fn systemd_install_now_reloads_enables_and_restarts_only_after_a_change() {
    let env = Env::systemd();
    let run = env.run(&["service", "install", "--now"]).ok();
    assert_eq!(
        env.take_calls(),
        [
            "systemctl --user daemon-reload",
            "systemctl --user enable --now claude-tokend.service"
        ]
    );
    assert!(
        run.out
            .contains("Running `systemctl --user enable --now claude-tokend.service`"),
        "each step is printed:\n{}",
        run.out
    );
    assert!(
        run.err.contains("Created symlink (fake)"),
        "what systemctl says on stderr is shown:\n{}",
        run.err
    );

    // The same again: nothing to write, nothing to restart.
    let run = env.run(&["service", "install", "--now"]).ok();
    assert!(run.out.contains("Unchanged:"), "{}", run.out);
    assert_eq!(
        env.take_calls(),
        [
            "systemctl --user daemon-reload",
            "systemctl --user enable --now claude-tokend.service"
        ]
    );

    // New settings replace our own unedited unit, show what changed, and restart the service.
    let run = env
        .run(&["service", "install", "--now", "--refresh-before", "20m"])
        .ok();
    assert!(run.out.contains("Replaced:"), "{}", run.out);
    assert!(
        run.out
            .contains("+ Environment=CLAUDE_TOKEND_REFRESH_BEFORE=20m"),
        "{}",
        run.out
    );
    assert!(has_line(
        &read(&env.unit_path()),
        "Environment=CLAUDE_TOKEND_REFRESH_BEFORE=20m"
    ));
    assert_eq!(
        env.take_calls(),
        [
            "systemctl --user daemon-reload",
            "systemctl --user enable --now claude-tokend.service",
            "systemctl --user try-restart claude-tokend.service"
        ]
    );

    // Adding the sandbox drop-in to a running service restarts it too.
    let run = env
        .run(&[
            "service",
            "install",
            "--now",
            "--refresh-before",
            "20m",
            "--sandbox",
        ])
        .ok();
    assert!(
        run.out.contains("Unchanged:") && run.out.contains("Wrote:"),
        "{}",
        run.out
    );
    assert_eq!(
        env.take_calls().last().map(String::as_str),
        Some("systemctl --user try-restart claude-tokend.service")
    );
}

#[test]
fn systemd_install_refuses_to_replace_a_hand_edited_unit_without_force() {
    let env = Env::systemd();
    env.run(&["service", "install"]).ok();
    let edited = read(&env.unit_path()) + "Nice=5\n";
    std::fs::write(env.unit_path(), &edited).unwrap();

    let run = env.run(&["service", "install", "--now"]).code(1);
    assert!(run.err.contains("edited by hand"), "{}", run.err);
    assert!(run.err.contains("--force"), "{}", run.err);
    assert!(run.err.contains("systemctl --user edit"), "{}", run.err);
    assert_eq!(read(&env.unit_path()), edited, "the edit is kept");
    assert!(env.take_calls().is_empty());

    // A file that was never ours is protected the same way.
    std::fs::write(env.unit_path(), "[Service]\nExecStart=/bin/true\n").unwrap();
    env.run(&["service", "install"]).code(1);

    env.run(&["service", "install", "--force"]).ok();
    let unit = read(&env.unit_path());
    assert!(!has_line(&unit, "Nice=5") && has_line(&unit, "Type=notify"));
}

#[test]
fn systemd_failure_names_the_command_and_exits_1() {
    let mut env = Env::systemd();
    env.set("FAKE_FAIL", "enable");
    let run = env.run(&["service", "install", "--now"]).code(1);
    assert!(
        run.err
            .contains("`systemctl --user enable --now claude-tokend.service` failed"),
        "{}",
        run.err
    );
    assert!(run.err.contains("by hand"), "{}", run.err);
    assert!(env.unit_path().is_file(), "the unit stays installed");

    // No systemctl at all.
    let empty = env.root.join("empty-bin");
    std::fs::create_dir_all(&empty).unwrap();
    env.unset("FAKE_FAIL")
        .set("PATH", &empty.display().to_string());
    let run = env.run(&["service", "install", "--now"]).code(1);
    assert!(run.err.contains("cannot run `systemctl`"), "{}", run.err);
}

#[test]
fn systemd_uninstall_reverses_install_and_keeps_the_users_drop_ins() {
    let env = Env::systemd();
    env.run(&["service", "install", "--sandbox"]).ok();
    let dropins = env.sandbox_path().parent().unwrap().to_path_buf();
    std::fs::write(dropins.join("override.conf"), "[Service]\nNice=5\n").unwrap();
    env.take_calls();

    let run = env.run(&["service", "uninstall"]).ok();
    assert_eq!(
        env.take_calls(),
        [
            "systemctl --user disable --now claude-tokend.service",
            "systemctl --user daemon-reload"
        ]
    );
    assert!(!env.unit_path().exists());
    assert!(!env.sandbox_path().exists());
    assert!(
        dropins.join("override.conf").is_file(),
        "the user's own drop-in stays"
    );
    assert!(run.out.contains("Removed:"), "{}", run.out);

    // Nothing left: nothing to do.
    let run = env.run(&["service", "uninstall"]).ok();
    assert!(run.out.contains("Nothing to remove"), "{}", run.out);
    assert!(env.take_calls().is_empty());
}

#[test]
fn systemd_uninstall_removes_nothing_when_stopping_fails() {
    let mut env = Env::systemd();
    env.run(&["service", "install"]).ok();
    env.set("FAKE_FAIL", "disable");
    let run = env.run(&["service", "uninstall"]).code(1);
    assert!(
        run.err
            .contains("`systemctl --user disable --now claude-tokend.service` failed"),
        "{}",
        run.err
    );
    assert!(env.unit_path().is_file());
}

#[test]
fn systemd_status_reports_installed_and_running() {
    let mut env = Env::systemd();
    let run = env.run(&["service", "status"]).code(1);
    assert!(run.out.contains("not installed"), "{}", run.out);
    assert!(env.take_calls().is_empty());

    env.run(&["service", "install"]).ok();
    env.take_calls();
    let run = env.run(&["service", "status"]).code(1);
    assert!(run.err.contains("not running"), "{}", run.err);
    env.set("FAKE_RUNNING", "1");
    let run = env.run(&["service", "status"]).ok();
    assert!(run.out.contains("Active: active (running)"), "{}", run.out);
    assert!(
        run.out.contains("journalctl --user -u claude-tokend -f"),
        "{}",
        run.out
    );
    assert_eq!(
        env.take_calls(),
        [
            "systemctl --user status --no-pager claude-tokend.service",
            "systemctl --user status --no-pager claude-tokend.service"
        ]
    );
}

/// A PATH with no systemctl or launchctl (nor anything else: `service` runs nothing more).
fn without_managers(env: &mut Env) {
    let empty = env.root.join("empty-bin");
    std::fs::create_dir_all(&empty).unwrap();
    env.set("PATH", &empty.display().to_string());
}

#[test]
fn systemd_status_says_when_it_cannot_ask_systemd() {
    let mut env = Env::systemd();
    env.run(&["service", "install"]).ok();
    env.set("FAKE_NO_BUS", "1");
    let run = env.run(&["service", "status"]).code(69);
    assert!(!run.err.contains("not running"), "{}", run.err);
    for words in [
        "could not ask systemd",
        "Failed to connect to user scope bus",
        "export XDG_RUNTIME_DIR=/run/user/$(id -u)",
        "loginctl enable-linger $USER",
    ] {
        assert!(run.err.contains(words), "no {words:?} in:\n{}", run.err);
    }
    assert_eq!(
        env.take_calls(),
        ["systemctl --user status --no-pager claude-tokend.service"]
    );

    // No systemctl at all.
    without_managers(&mut env);
    let run = env.run(&["service", "status"]).code(69);
    assert!(run.err.contains("could not ask systemd"), "{}", run.err);
}

#[test]
fn systemd_uninstall_removes_the_files_when_systemd_cannot_be_reached() {
    let mut env = Env::systemd();
    env.run(&["service", "install", "--sandbox"]).ok();
    // What `systemctl --user enable` leaves behind, and which would dangle without the unit.
    let wants = env.root.join("xdg/systemd/user/default.target.wants");
    std::fs::create_dir_all(&wants).unwrap();
    std::os::unix::fs::symlink(env.unit_path(), wants.join(UNIT)).unwrap();
    env.take_calls();
    env.set("FAKE_NO_BUS", "1");

    let run = env.run(&["service", "uninstall"]).ok();
    assert!(!env.unit_path().exists(), "{}", run.out);
    assert!(!env.sandbox_path().exists());
    assert!(
        std::fs::symlink_metadata(wants.join(UNIT)).is_err(),
        "the enable link is gone too"
    );
    assert!(run.err.contains("warning"), "{}", run.err);
    assert!(run.err.contains("could not ask systemd"), "{}", run.err);
    assert!(run.out.contains("Removed:"), "{}", run.out);
    assert_eq!(
        env.take_calls(),
        ["systemctl --user disable --now claude-tokend.service"],
        "no daemon-reload where the first call could not get through"
    );

    // The same without systemctl on PATH.
    env.unset("FAKE_NO_BUS");
    env.run(&["service", "install"]).ok();
    without_managers(&mut env);
    let run = env.run(&["service", "uninstall"]).ok();
    assert!(run.err.contains("could not ask systemd"), "{}", run.err);
    assert!(!env.unit_path().exists());
}

#[test]
fn sandbox_drop_in_opens_exactly_the_directories_the_daemon_writes() {
    // CLAUDE_CONFIG_DIR: the config dir and its parent (Claude Code's `<config dir>.lock`).
    let mut env = Env::systemd();
    let state = env.root.join("state");
    env.set(
        "CLAUDE_CONFIG_DIR",
        &state.join("claude").display().to_string(),
    );
    env.run(&["service", "install", "--sandbox"]).ok();
    let dropin = read(&env.sandbox_path());
    assert!(
        has_line(&dropin, &format!("ReadWritePaths=-{}", state.display())),
        "{dropin}"
    );
    for line in [
        "ProtectSystem=strict",
        "ProtectHome=read-only",
        "PrivateTmp=yes",
    ] {
        assert!(has_line(&dropin, line), "{dropin}");
    }

    // A symlinked credentials file: its target's directory too.
    let mut env = Env::systemd();
    let elsewhere = env.root.join("vault");
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::create_dir_all(env.home().join(".claude")).unwrap();
    std::os::unix::fs::symlink(
        elsewhere.join("creds.json"),
        env.home().join(".claude/.credentials.json"),
    )
    .unwrap();
    env.unset("CLAUDE_CONFIG_DIR");
    env.run(&["service", "install", "--sandbox"]).ok();
    let dropin = read(&env.sandbox_path());
    assert!(
        has_line(
            &dropin,
            &format!(
                "ReadWritePaths=-{} -{}",
                env.home().display(),
                elsewhere.display()
            )
        ),
        "{dropin}"
    );
}
