//! `service install` beside a package's systemd user unit (CONTRACT.md "Packages"): it writes
//! only a drop-in carrying the logins and settings onto the packaged unit, never a second unit
//! that would shadow it, and `uninstall` takes that drop-in back. The packaged unit's directory
//! is `CLAUDE_TOKEND_TEST_PACKAGED_UNIT_DIR` here (a test cannot write /usr/lib), so these tests
//! need the test seams (`cargo test --workspace`).

use std::path::PathBuf;

mod common;

use common::*;

/// The unit a package installs: the shipped one, running /usr/bin/claude-tokend.
fn packaged_unit_text() -> String {
    let shipped =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../systemd/claude-tokend.service");
    read(&shipped).replace(
        "ExecStart=%h/.cargo/bin/claude-tokend",
        "ExecStart=/usr/bin/claude-tokend",
    )
}

/// An environment with a packaged unit in `<root>/pkg`; its path.
fn with_package(env: &mut Env) -> PathBuf {
    require_seams();
    let dir = env.root.join("pkg");
    std::fs::create_dir_all(&dir).unwrap();
    let unit = dir.join(UNIT);
    std::fs::write(&unit, packaged_unit_text()).unwrap();
    env.set(
        "CLAUDE_TOKEND_TEST_PACKAGED_UNIT_DIR",
        &dir.display().to_string(),
    );
    unit
}

fn dropin_path(env: &Env) -> PathBuf {
    env.root
        .join("xdg/systemd/user")
        .join(format!("{UNIT}.d"))
        .join("install.conf")
}

/// The `ExecStart=` values of a file, in order.
fn exec_starts(text: &str) -> Vec<&str> {
    text.lines()
        .filter_map(|l| l.strip_prefix("ExecStart="))
        .collect()
}

#[test]
fn with_a_packaged_unit_install_writes_only_a_drop_in_and_uninstall_takes_it_back() {
    let mut env = Env::systemd();
    let packaged = with_package(&mut env);
    let run = env
        .run(&[
            "service",
            "install",
            "--credentials",
            "/srv/a.json",
            "--config-dir",
            "/srv/b 50%",
            "--refresh-before",
            "20m",
        ])
        .ok();
    assert!(!env.unit_path().exists(), "no second unit:\n{}", run.out);
    let dropin = read(&dropin_path(&env));
    assert!(has_line(&dropin, "[Service]"), "{dropin}");
    // Emptied first: a second ExecStart= would be added to the package's, not replace it.
    let execs = exec_starts(&dropin);
    assert_eq!(execs.len(), 2, "{dropin}");
    assert_eq!(execs[0], "", "{dropin}");
    assert_eq!(
        unit_exec_start(&format!("ExecStart={}", execs[1])),
        [
            program().as_str(),
            "--credentials",
            "/srv/a.json",
            "--config-dir",
            "/srv/b 50%"
        ],
        "{dropin}"
    );
    assert_eq!(
        unit_environment(&dropin),
        [("CLAUDE_TOKEND_REFRESH_BEFORE".to_owned(), "20m".to_owned())]
    );
    assert_eq!(mode(&dropin_path(&env)), 0o644);
    assert_eq!(
        read(&packaged),
        packaged_unit_text(),
        "the package's unit is left alone"
    );
    assert!(
        run.out.contains(&packaged.display().to_string()),
        "names the packaged unit:\n{}",
        run.out
    );
    assert!(
        run.out
            .contains("systemctl --user enable --now claude-tokend"),
        "{}",
        run.out
    );
    assert!(env.take_calls().is_empty(), "no --now: nothing run");

    // The package's unit with the drop-in verifies as systemd reads them together.
    match systemd_verify(&env, &packaged) {
        Some(complaints) => assert_eq!(complaints, "", "systemd-analyze verify"),
        None => eprintln!("systemd-analyze is not installed here: the verify step is skipped"),
    }

    // --now starts the packaged unit; the status reads it.
    env.run(&[
        "service",
        "install",
        "--now",
        "--credentials",
        "/srv/a.json",
    ])
    .ok();
    assert_eq!(
        env.take_calls(),
        [
            "systemctl --user daemon-reload",
            "systemctl --user enable --now claude-tokend.service",
            "systemctl --user try-restart claude-tokend.service"
        ]
    );
    let run = env.run(&["service", "status"]).code(1);
    assert!(
        run.out.contains(&packaged.display().to_string()) && !run.out.contains("not installed"),
        "{}",
        run.out
    );
    env.take_calls();

    // Uninstall: the drop-in goes, the package's unit stays.
    let run = env.run(&["service", "uninstall"]).ok();
    assert!(!dropin_path(&env).exists(), "{}", run.out);
    assert_eq!(read(&packaged), packaged_unit_text());
    assert_eq!(
        env.take_calls(),
        [
            "systemctl --user disable --now claude-tokend.service",
            "systemctl --user daemon-reload"
        ]
    );
    let run = env.run(&["service", "uninstall"]).ok();
    assert!(run.out.contains("Nothing to remove"), "{}", run.out);
    assert!(env.take_calls().is_empty());
}

#[test]
fn a_user_unit_that_would_shadow_the_packaged_one_is_taken_away() {
    let mut env = Env::systemd();
    // An earlier `service install` (a cargo install), enabled.
    env.run(&["service", "install"]).ok();
    let wants = env.root.join("xdg/systemd/user/default.target.wants");
    std::fs::create_dir_all(&wants).unwrap();
    std::os::unix::fs::symlink(env.unit_path(), wants.join(UNIT)).unwrap();
    let edited = read(&env.unit_path()) + "Nice=5\n";
    std::fs::write(env.unit_path(), &edited).unwrap();

    // Then the package: a hand-edited user unit is not taken without --force, and then
    // nothing is written.
    with_package(&mut env);
    let run = env.run(&["service", "install", "--now"]).code(1);
    assert!(run.err.contains("edited by hand"), "{}", run.err);
    assert!(run.err.contains("shadow"), "{}", run.err);
    assert_eq!(read(&env.unit_path()), edited);
    assert!(!dropin_path(&env).exists());
    assert!(env.take_calls().is_empty());

    let run = env.run(&["service", "install", "--now", "--force"]).ok();
    assert!(
        std::fs::symlink_metadata(env.unit_path()).is_err(),
        "{}",
        run.out
    );
    assert!(
        std::fs::symlink_metadata(wants.join(UNIT)).is_err(),
        "its enable link, which would dangle, goes with it"
    );
    assert!(
        run.out
            .contains(&format!("Removed: {}", env.unit_path().display())),
        "{}",
        run.out
    );
    assert!(dropin_path(&env).is_file());
    assert_eq!(
        env.take_calls(),
        [
            "systemctl --user daemon-reload",
            "systemctl --user enable --now claude-tokend.service",
            "systemctl --user try-restart claude-tokend.service"
        ],
        "the running service restarts onto the package's unit"
    );

    // The package removed again: a unit of our own, and the drop-in (which would replace its
    // ExecStart=) goes.
    std::fs::remove_dir_all(env.root.join("pkg")).unwrap();
    let run = env.run(&["service", "install"]).ok();
    assert!(env.unit_path().is_file(), "{}", run.out);
    assert!(!dropin_path(&env).exists(), "{}", run.out);
}

#[test]
fn a_users_own_install_conf_without_a_package_is_refused_for_what_it_is() {
    let env = Env::systemd();
    let dropin = dropin_path(&env);
    std::fs::create_dir_all(dropin.parent().unwrap()).unwrap();
    std::fs::write(&dropin, "[Service]\nNice=5\n").unwrap();
    let run = env.run(&["service", "install"]).code(1);
    assert!(
        !run.err.contains("which is gone"),
        "no package was ever there:\n{}",
        run.err
    );
    assert!(
        run.err.contains("did not write") && run.err.contains("rename it"),
        "{}",
        run.err
    );
    assert_eq!(read(&dropin), "[Service]\nNice=5\n");
    assert!(!env.unit_path().exists());
}

#[test]
fn the_enable_link_of_a_removed_unit_is_not_said_to_point_at_a_kept_file() {
    let mut env = Env::systemd();
    env.run(&["service", "install"]).ok();
    let wants = env.root.join("xdg/systemd/user/default.target.wants");
    std::fs::create_dir_all(&wants).unwrap();
    std::os::unix::fs::symlink(env.unit_path(), wants.join(UNIT)).unwrap();
    with_package(&mut env);
    let run = env.run(&["service", "install"]).ok();
    let line = run
        .out
        .lines()
        .find(|l| l.starts_with(&format!("Removed: {}", wants.join(UNIT).display())))
        .unwrap_or_else(|| panic!("the enable link's removal is not said:\n{}", run.out));
    assert!(!line.contains("is kept"), "{line}");
    assert!(line.contains("removed above"), "{line}");
}

#[test]
fn the_drop_in_directory_goes_with_install_conf_when_nothing_else_is_in_it() {
    let mut env = Env::systemd();
    with_package(&mut env);
    env.run(&["service", "install"]).ok();
    let dir = dropin_path(&env).parent().unwrap().to_path_buf();
    assert!(dropin_path(&env).is_file());
    // The package removed: install.conf is taken away, and its directory, empty now, too.
    std::fs::remove_dir_all(env.root.join("pkg")).unwrap();
    let run = env.run(&["service", "install"]).ok();
    assert!(!dir.exists(), "an empty directory was left:\n{}", run.out);

    // Never with another file in it (the user's override.conf).
    with_package(&mut env);
    std::fs::remove_file(env.unit_path()).unwrap();
    env.run(&["service", "install"]).ok();
    std::fs::write(dir.join("override.conf"), "[Service]\nNice=5\n").unwrap();
    std::fs::remove_dir_all(env.root.join("pkg")).unwrap();
    env.run(&["service", "install"]).ok();
    assert!(!dropin_path(&env).exists());
    assert_eq!(read(&dir.join("override.conf")), "[Service]\nNice=5\n");
}
