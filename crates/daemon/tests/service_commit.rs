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
