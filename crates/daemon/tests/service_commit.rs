//! `service install` writes all of its files or none: each new file goes to a temp file in its
//! own directory first, and only when every temp is there are they renamed into place. A file
//! that cannot be written leaves the earlier install whole (never a unit for one login beside a
//! sandbox for another); a rename that fails after that says exactly what is in place.

use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;

mod common;

use common::*;

fn read_write_paths(dropin: &str) -> String {
    dropin
        .lines()
        .find_map(|l| l.strip_prefix("ReadWritePaths="))
        .unwrap_or_else(|| panic!("no ReadWritePaths= in:\n{dropin}"))
        .to_owned()
}

/// No temp file is left in `dir` (or below it).
#[track_caller]
fn no_temps(dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        assert!(!name.contains(".tmp"), "a temp file was left: {name}");
        if entry.file_type().unwrap().is_dir() {
            no_temps(&entry.path());
        }
    }
}

#[test]
fn a_drop_in_that_cannot_be_written_leaves_the_earlier_install_whole() {
    let env = Env::systemd();
    // In two directories: the sandbox for one does not cover the other.
    let (a, b) = (env.root.join("a/claude"), env.root.join("b/claude"));
    let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());
    env.run(&["service", "install", "--sandbox", "--config-dir", a])
        .ok();
    let unit = read(&env.unit_path());
    let dropins = env.sandbox_path().parent().unwrap().to_path_buf();
    env.take_calls();

    // The drop-in directory is a dangling link (its files moved away, say): no temp can be
    // made there, as root or not.
    let moved = env.root.join("moved-dropins");
    std::fs::rename(&dropins, &moved).unwrap();
    symlink(env.root.join("nowhere"), &dropins).unwrap();
    let run = env
        .run(&[
            "service",
            "install",
            "--now",
            "--sandbox",
            "--config-dir",
            b,
        ])
        .code(1);
    assert!(run.err.contains("nothing was changed"), "{}", run.err);
    assert!(
        run.err.contains(&env.sandbox_path().display().to_string()),
        "says which file: {}",
        run.err
    );
    assert_eq!(read(&env.unit_path()), unit, "the unit was replaced");
    assert!(env.take_calls().is_empty(), "nothing is started either");
    no_temps(env.unit_path().parent().unwrap());
    std::fs::remove_file(&dropins).unwrap();
    std::fs::rename(&moved, &dropins).unwrap();

    // A drop-in directory nobody may write in (chmod 555): root may write there all the same,
    // so as root this part runs as another user, whose tree it then is.
    std::fs::set_permissions(&dropins, std::fs::Permissions::from_mode(0o555)).unwrap();
    let sandbox = read(&env.sandbox_path());
    let run = if euid() == 0 {
        eprintln!("as root, chmod 555 does not stop root: running this step as uid 1000");
        chown_tree(&env.root, 1000);
        env.run_as_uid(1000, &["service", "install", "--now", "--config-dir", b])
    } else {
        env.run(&["service", "install", "--now", "--config-dir", b])
    };
    let run = run.code(1);
    assert!(run.err.contains("nothing was changed"), "{}", run.err);
    assert_eq!(read(&env.unit_path()), unit, "the unit was replaced");
    assert_eq!(read(&env.sandbox_path()), sandbox);
    assert_eq!(
        read_write_paths(&sandbox),
        format!("-{}", env.root.join("a").display())
    );
    assert!(env.take_calls().is_empty());
    no_temps(env.unit_path().parent().unwrap());
    std::fs::set_permissions(&dropins, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn a_rename_that_fails_midway_says_exactly_what_is_in_place() {
    require_seams();
    let mut env = Env::systemd();
    // The second rename fails: the seam fails every rename once the unit exists.
    let unit = env.unit_path().display().to_string();
    env.set("CLAUDE_TOKEND_TEST_RENAME_ERRNO", "5")
        .set("CLAUDE_TOKEND_TEST_RENAME_FAIL_WHILE", &unit);
    let run = env
        .run(&["service", "install", "--now", "--sandbox"])
        .code(1);
    let sandbox = env.sandbox_path().display().to_string();
    for words in [
        "half done",
        &format!("{unit} (written)"),
        &format!("{sandbox} (not written)"),
        "run again",
        "service install --now --sandbox",
    ] {
        assert!(run.err.contains(words), "no {words:?} in:\n{}", run.err);
    }
    assert!(env.unit_path().is_file() && !env.sandbox_path().exists());
    assert!(env.take_calls().is_empty());
    no_temps(env.unit_path().parent().unwrap());
}

#[test]
fn a_signal_while_the_files_are_put_in_place_leaves_no_temps_and_says_what_is_there() {
    // Before the first rename: undone, nothing changed.
    let mut env = Env::systemd();
    let pause = env.pause_at("service-commit-staged");
    let running = env.spawn(&["service", "install", "--now", "--sandbox"]);
    running.paused(&pause, || running.signal(libc::SIGINT));
    let run = running.finish().code(130);
    assert!(
        run.err.contains("SIGINT") && run.err.contains("nothing was changed"),
        "{}",
        run.err
    );
    // The directories made for the temps went with them.
    assert!(!env.root.join("xdg").exists());
    assert!(env.take_calls().is_empty());

    // After the first: every file is put in place, then the command stops, saying so and
    // what is left to run.
    let mut env = Env::systemd();
    let pause = env.pause_at("service-commit-renaming");
    let running = env.spawn(&["service", "install", "--now", "--sandbox"]);
    running.paused(&pause, || running.signal(libc::SIGTERM));
    let run = running.finish().code(143);
    assert!(env.unit_path().is_file() && env.sandbox_path().is_file());
    no_temps(&env.root.join("xdg"));
    for words in [
        "SIGTERM".to_owned(),
        format!("{} (written)", env.unit_path().display()),
        format!("{} (written)", env.sandbox_path().display()),
        "\n  systemctl --user daemon-reload\n  systemctl --user enable --now claude-tokend.service\n"
            .to_owned(),
    ] {
        assert!(run.err.contains(&words), "no {words:?} in:\n{}", run.err);
    }
    assert!(env.take_calls().is_empty(), "nothing more is done");
}

/// A pid no process has now (one that ran and was reaped).
fn gone_pid() -> u32 {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

#[test]
fn temps_an_interrupted_install_left_are_swept_and_are_no_drop_ins_of_the_users() {
    let env = Env::systemd();
    env.run(&["service", "install", "--sandbox"]).ok();
    let unit_dir = env.unit_path().parent().unwrap().to_path_buf();
    let dropins = env.sandbox_path().parent().unwrap().to_path_buf();
    // What a kill -9 during the commit leaves.
    let pid = gone_pid();
    let ours = [
        unit_dir.join(format!(".claude-tokend.service.tmp{pid}")),
        dropins.join(format!(".sandbox.conf.tmp{pid}")),
    ];
    for t in &ours {
        std::fs::write(t, "half").unwrap();
    }
    let run = env.run(&["service", "uninstall"]).ok();
    for t in &ours {
        assert!(!t.exists(), "{} was left:\n{}", t.display(), run.out);
    }
    assert!(!dropins.exists(), "{}", run.out);
    assert!(!run.out.contains("did not write"), "{}", run.out);

    // Install sweeps them too; only regular files named exactly as its temps are.
    let not_ours = [
        unit_dir.join(format!(".claude-tokend.service.tmp{pid}x")),
        unit_dir.join(".claude-tokend.service.tmp"),
        unit_dir.join(format!(".other.service.tmp{pid}")),
    ];
    std::fs::create_dir_all(&dropins).unwrap();
    for t in ours.iter().chain(&not_ours) {
        std::fs::write(t, "half").unwrap();
    }
    let linked = unit_dir.join(format!(".claude-tokend.service.tmp{}", gone_pid()));
    symlink(env.root.join("kept"), &linked).unwrap();
    let run = env.run(&["service", "install", "--sandbox"]).ok();
    for t in &ours {
        assert!(!t.exists(), "{} was left:\n{}", t.display(), run.out);
        assert!(
            run.out.contains(&t.display().to_string()),
            "says so:\n{}",
            run.out
        );
    }
    for t in &not_ours {
        assert!(t.exists(), "{} was removed", t.display());
    }
    assert!(std::fs::symlink_metadata(&linked).is_ok());
}

#[test]
fn uninstall_checks_every_removal_before_it_stops_anything() {
    let env = Env::systemd();
    env.run(&["service", "install", "--sandbox"]).ok();
    env.take_calls();
    let dropins = env.sandbox_path().parent().unwrap().to_path_buf();
    std::fs::set_permissions(&dropins, std::fs::Permissions::from_mode(0o555)).unwrap();
    // Root may remove there all the same: as root this runs as another user, whose tree it is.
    let as_user = |args: &[&str]| {
        if euid() == 0 {
            eprintln!("as root, chmod 555 does not stop root: running as uid 1000");
            chown_tree(&env.root, 1000);
            env.run_as_uid(1000, args)
        } else {
            env.run(args)
        }
    };
    let run = as_user(&["service", "uninstall"]).code(1);
    assert!(
        run.err
            .contains(&format!("cannot remove {}", env.sandbox_path().display())),
        "{}",
        run.err
    );
    assert!(run.err.contains("nothing was"), "{}", run.err);
    assert!(env.take_calls().is_empty(), "nothing is stopped");
    assert!(env.unit_path().is_file() && env.sandbox_path().is_file());
    std::fs::set_permissions(&dropins, std::fs::Permissions::from_mode(0o755)).unwrap();

    // One that fails after the check anyway (the directory changed meanwhile): what is done,
    // what is not, and what to run.
    let mut env = env;
    let pause = env.pause_at("service-uninstall-removing");
    let running = if euid() == 0 {
        env.spawn_as_uid(1000, &["service", "uninstall"])
    } else {
        env.spawn(&["service", "uninstall"])
    };
    running.paused(&pause, || {
        std::fs::set_permissions(&dropins, std::fs::Permissions::from_mode(0o555)).unwrap()
    });
    let run = running.finish().code(1);
    let unit = env.unit_path().display().to_string();
    let sandbox = env.sandbox_path().display().to_string();
    for words in [
        "claude-tokend.service (stopped and disabled)".to_owned(),
        format!("{unit} (removed)"),
        format!("{sandbox} (not removed)"),
        format!("\n  rm -f {sandbox}\n  systemctl --user daemon-reload\n"),
    ] {
        assert!(run.err.contains(&words), "no {words:?} in:\n{}", run.err);
    }
    std::fs::set_permissions(&dropins, std::fs::Permissions::from_mode(0o755)).unwrap();

    // launchd, the same way (the agent loaded: uninstall would boot it out).
    let mut env = Env::new("launchd");
    env.set("FAKE_RUNNING", "1");
    env.run(&["service", "install"]).ok();
    let agents = env.agent_path().parent().unwrap().to_path_buf();
    std::fs::set_permissions(&agents, std::fs::Permissions::from_mode(0o555)).unwrap();
    let run = if euid() == 0 {
        chown_tree(&env.root, 1000);
        env.run_as_uid(1000, &["service", "uninstall"])
    } else {
        env.run(&["service", "uninstall"])
    };
    let run = run.code(1);
    assert!(run.err.contains("cannot remove"), "{}", run.err);
    assert!(
        env.take_calls().iter().all(|c| !c.contains("bootout")),
        "nothing is stopped"
    );
    assert!(env.agent_path().is_file());
    std::fs::set_permissions(&agents, std::fs::Permissions::from_mode(0o755)).unwrap();
}
