//! `service install` carries mirrors with their logins (CONTRACT.md "Access-only copies":
//! "`service install` carries mirrors with their logins"): flags in order on the command line,
//! the variable as a variable, `--mirror-cmd` as its variable, and the sandbox lets the daemon
//! write in each mirror directory.

mod common;

use common::*;

#[test]
fn mirrors_named_by_flags_go_on_the_command_line_after_their_logins() {
    let env = Env::systemd();
    let a = env.root.join("a").display().to_string();
    let b = env.root.join("b").display().to_string();
    let ma = env.root.join("mirror-a").display().to_string();
    std::fs::create_dir_all(&ma).unwrap();
    // A mirror outside every login's directories, not made yet: the sandbox must let the
    // daemon create it in its parent.
    let outside = std::env::temp_dir().join(format!("tokend-svc-mirror-{}", std::process::id()));
    std::fs::create_dir_all(&outside).unwrap();
    let mb = outside.join("mirror-b").display().to_string();
    env.run(&[
        "service",
        "install",
        "--sandbox",
        "--config-dir",
        "a",
        "--mirror",
        "mirror-a",
        "--config-dir",
        "b",
        "--mirror",
        &mb,
        "--mirror-cmd",
        "ssh box 'cat > x'",
    ])
    .ok();
    let unit = read(&env.unit_path());
    assert_eq!(
        unit_exec_start(&unit),
        [
            program(),
            "--config-dir".into(),
            a,
            "--mirror".into(),
            ma.clone(),
            "--config-dir".into(),
            b,
            "--mirror".into(),
            mb.clone(),
        ],
        "{unit}"
    );
    let vars = unit_environment(&unit);
    assert!(
        vars.contains(&(
            "CLAUDE_TOKEND_MIRROR_CMD".to_owned(),
            "ssh box 'cat > x'".to_owned()
        )),
        "{vars:?}"
    );
    assert!(
        !vars.iter().any(|(k, _)| k == "CLAUDE_TOKEND_CONFIG_DIRS"),
        "the logins go on the command line with their mirrors: {vars:?}"
    );
    // The sandbox lets the daemon write in the mirror (and, for one not made yet, where it
    // will be made).
    let sandbox = read(&env.sandbox_path());
    let paths = sandbox
        .lines()
        .find_map(|l| l.strip_prefix("ReadWritePaths="))
        .expect("ReadWritePaths=");
    let words = systemd_words(paths);
    let canonical_ma = std::fs::canonicalize(&ma).unwrap();
    let covers = |dir: &std::path::Path| {
        words.iter().any(|w| {
            w.strip_prefix('-')
                .is_some_and(|listed| dir.starts_with(listed))
        })
    };
    assert!(
        covers(&canonical_ma) || covers(std::path::Path::new(&ma)),
        "{ma} is not writable in the sandbox: {words:?}"
    );
    let outside_real = std::fs::canonicalize(&outside).unwrap();
    assert!(
        words.contains(&format!("-{}", outside_real.display())),
        "{mb} cannot be created in the sandbox: {words:?}"
    );
    let _ = std::fs::remove_dir_all(&outside);
    if let Some(complaints) = systemd_verify(&env, &env.unit_path()) {
        assert!(
            complaints.is_empty(),
            "systemd-analyze: {complaints}\n{unit}"
        );
    }
}

#[test]
fn the_mirrors_variable_is_carried_absolute_and_a_mirror_before_any_login_stays_first() {
    let mut env = Env::systemd();
    env.set("CLAUDE_TOKEND_MIRRORS", "~/m1:rel/m2");
    env.run(&["service", "install"]).ok();
    let unit = read(&env.unit_path());
    let home = env.home().display().to_string();
    let rel = env.root.join("rel/m2").display().to_string();
    assert!(
        unit_environment(&unit).contains(&(
            "CLAUDE_TOKEND_MIRRORS".to_owned(),
            format!("{home}/m1:{rel}")
        )),
        "{unit}"
    );

    // A --mirror replaces the variable, and one before any login flag belongs to the only
    // login: it stays before it.
    env.run(&[
        "service",
        "install",
        "--force",
        "--mirror",
        "m0",
        "--credentials",
        "c.json",
    ])
    .ok();
    let unit = read(&env.unit_path());
    assert_eq!(
        unit_exec_start(&unit)[1..],
        [
            "--mirror".to_owned(),
            env.root.join("m0").display().to_string(),
            "--credentials".to_owned(),
            env.root.join("c.json").display().to_string(),
        ],
        "{unit}"
    );
    assert!(
        !unit_environment(&unit)
            .iter()
            .any(|(k, _)| k == "CLAUDE_TOKEND_MIRRORS"),
        "{unit}"
    );
}

#[test]
fn a_mirror_that_would_overwrite_the_login_is_refused_before_anything_is_written() {
    let env = Env::systemd();
    let run = env
        .run(&[
            "service",
            "install",
            "--sandbox",
            "--config-dir",
            "conf",
            "--mirror",
            "conf",
        ])
        .code(2);
    assert!(run.err.contains("config directory"), "{}", run.err);
    assert!(!env.unit_path().exists());
}

#[test]
fn mirrors_the_daemon_would_refuse_are_refused_by_install_too() {
    let env = Env::systemd();
    let real = env.root.join("real");
    std::fs::create_dir_all(&real).unwrap();
    std::fs::write(
        real.join(".credentials.json"),
        r#"{"claudeAiOauth":{"accessToken":"a","refreshToken":"sk-ant-ort01-someone"}}"#,
    )
    .unwrap();
    for args in [
        &["service", "install", "--mirror", "real"][..],
        &["service", "install", "--mirror", "m1", "--mirror", "m1/"],
        &[
            "service",
            "install",
            "--mirror",
            "m1",
            "--config-dir",
            "a",
            "--config-dir",
            "b",
        ],
    ] {
        let run = env.run(args).code(2);
        assert!(run.err.contains("mirror"), "{args:?}: {}", run.err);
        assert!(!env.unit_path().exists(), "{args:?}: nothing is written");
    }
}
