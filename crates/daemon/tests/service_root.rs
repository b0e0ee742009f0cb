//! Who the service is for: the user whose HOME it is. Root with another user's HOME (`sudo -E`,
//! `su -m`, macOS's sudo) is refused before anything is written, and no directory on the way to
//! a service file may belong to anyone but the user (or root); whatever is done to a file is done
//! to the one that was judged, never to what its path leads to a moment later.

use std::os::unix::fs::{PermissionsExt, symlink};

mod common;

use common::*;

/// Whether this test can run: only root can be root with another user's HOME, or make a
/// directory another user owns.
fn as_root(what: &str) -> bool {
    if euid() != 0 {
        eprintln!(
            "skipped: {what} needs root (these tests run as uid {})",
            euid()
        );
        return false;
    }
    true
}

#[test]
fn root_with_another_users_home_is_refused_before_anything_is_written() {
    if !as_root("root with another user's HOME") {
        return;
    }
    for manager in ["systemd", "launchd"] {
        let env = Env::new(manager);
        chown_tree(&env.home(), 1000);
        for args in [
            &["service", "install"][..],
            &["service", "install", "--now", "--force"],
            &["service", "uninstall"],
            &["service", "uninstall", "--force"],
        ] {
            let run = env.run(args).code(2);
            for words in [
                "per-user",
                "without sudo",
                &env.home().display().to_string(),
            ] {
                assert!(
                    run.err.contains(words),
                    "{manager} {args:?}: no {words:?} in:\n{}",
                    run.err
                );
            }
            assert_eq!(
                std::fs::read_dir(env.home()).unwrap().count(),
                0,
                "{manager} {args:?}: something was written in the user's HOME"
            );
            assert!(env.take_calls().is_empty());
        }
    }

    // Root's own HOME: installed for root, and the note says so.
    let env = Env::systemd();
    let run = env.run(&["service", "install"]).ok();
    assert!(run.err.contains("for root"), "{}", run.err);
}

#[test]
fn a_directory_on_the_way_that_another_user_owns_is_refused() {
    if !as_root("a directory another user owns") {
        return;
    }
    // ~/.config a link into a directory of uid 1000's: root would write root's unit there.
    let env = Env::new("systemd");
    let theirs = env.root.join("theirs");
    std::fs::create_dir_all(theirs.join("cfg")).unwrap();
    chown_tree(&theirs, 1000);
    symlink(theirs.join("cfg"), env.home().join(".config")).unwrap();
    for args in [&["service", "install"][..], &["service", "uninstall"]] {
        let run = env.run(args).code(1);
        assert!(
            run.err.contains(&theirs.join("cfg").display().to_string())
                && run.err.contains("uid 1000"),
            "{args:?}: {}",
            run.err
        );
        assert_eq!(std::fs::read_dir(theirs.join("cfg")).unwrap().count(), 0);
    }

    // The unit a link to a file in such a directory: not written through, --force or not.
    let env = Env::systemd();
    let theirs = env.root.join("theirs");
    std::fs::create_dir_all(&theirs).unwrap();
    std::fs::write(theirs.join("x.service"), "mine\n").unwrap();
    chown_tree(&theirs, 1000);
    std::fs::create_dir_all(env.unit_path().parent().unwrap()).unwrap();
    symlink(theirs.join("x.service"), env.unit_path()).unwrap();
    let run = env.run(&["service", "install", "--force"]).code(1);
    assert!(
        run.err.contains(&theirs.display().to_string()) && run.err.contains("uid 1000"),
        "{}",
        run.err
    );
    assert_eq!(read(&theirs.join("x.service")), "mine\n");
}

#[test]
fn the_mode_is_fixed_on_the_file_judged_not_on_what_its_path_leads_to_later() {
    let mut env = Env::systemd();
    env.run(&["service", "install"]).ok();
    std::fs::set_permissions(env.unit_path(), std::fs::Permissions::from_mode(0o666)).unwrap();
    let other = env.root.join("other");
    std::fs::write(&other, "x").unwrap();
    std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o666)).unwrap();
    let moved = env.root.join("judged");
    let pause = env.pause_at("service-fix-mode");
    let running = env.spawn(&["service", "install"]);
    running.paused(&pause, || {
        std::fs::rename(env.unit_path(), &moved).unwrap();
        symlink(&other, env.unit_path()).unwrap();
    });
    running.finish().ok();
    assert_eq!(
        mode(&other),
        0o666,
        "the file the link leads to was changed"
    );
    assert_eq!(mode(&moved), 0o644);
}
