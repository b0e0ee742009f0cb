//! The service files on disk, whatever is there before: the sandbox drop-in kept in step with
//! the unit, modes that do not follow the umask, a hand edit that neither `install` nor
//! `uninstall` takes without `--force`, and a unit that is a link (a dotfiles repository).

use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;

mod common;

use common::*;

fn read_write_paths(dropin: &str) -> &str {
    dropin
        .lines()
        .find_map(|l| l.strip_prefix("ReadWritePaths="))
        .unwrap_or_else(|| panic!("no ReadWritePaths= in:\n{dropin}"))
}

#[test]
fn reinstalling_rewrites_the_sandbox_drop_in_for_the_new_logins() {
    let mut env = Env::systemd();
    let (a, b) = (env.root.join("a"), env.root.join("b"));
    env.set("CLAUDE_CONFIG_DIR", &a.join("claude").display().to_string());
    env.run(&["service", "install", "--now", "--sandbox"]).ok();
    assert_eq!(
        read_write_paths(&read(&env.sandbox_path())),
        format!("-{}", a.display())
    );
    env.take_calls();

    // Another config directory, and no --sandbox this time: the drop-in that is there is kept
    // (it is how the user asked for the sandbox) and brought up to date, or the service could
    // not write the new login under ProtectSystem=strict.
    env.set("CLAUDE_CONFIG_DIR", &b.join("claude").display().to_string());
    let run = env.run(&["service", "install", "--now"]).ok();
    assert_eq!(
        read_write_paths(&read(&env.sandbox_path())),
        format!("-{}", b.display()),
        "{}",
        run.out
    );
    assert!(
        run.out
            .contains(&format!("Replaced: {}", env.sandbox_path().display())),
        "{}",
        run.out
    );
    assert_eq!(
        env.take_calls().last().map(String::as_str),
        Some("systemctl --user try-restart claude-tokend.service"),
        "the running service restarts onto the new files"
    );

    // A drop-in edited by hand is not rewritten without --force, with or without --sandbox,
    // and then nothing at all is written.
    let edited = read(&env.sandbox_path()).replace("PrivateTmp=yes", "PrivateTmp=no");
    std::fs::write(env.sandbox_path(), &edited).unwrap();
    let unit = read(&env.unit_path());
    env.set("CLAUDE_CONFIG_DIR", &a.join("claude").display().to_string());
    let run = env.run(&["service", "install"]).code(1);
    assert!(run.err.contains("edited by hand"), "{}", run.err);
    assert!(
        run.err.contains(&env.sandbox_path().display().to_string()),
        "{}",
        run.err
    );
    assert_eq!(read(&env.sandbox_path()), edited);
    assert_eq!(read(&env.unit_path()), unit, "nothing is written");
    env.run(&["service", "install", "--force"]).ok();
    assert_eq!(
        read_write_paths(&read(&env.sandbox_path())),
        format!("-{}", a.display())
    );
}

/// The directories between the root of the test and `path`, `path` included.
fn dirs_down_to(env: &Env, path: &Path) -> Vec<std::path::PathBuf> {
    path.ancestors()
        .take_while(|d| *d != env.root && *d != env.home())
        .map(Path::to_path_buf)
        .collect()
}

#[test]
fn service_files_are_0644_in_directories_only_their_owner_writes_whatever_the_umask() {
    for mask in ["000", "077"] {
        let env = Env::systemd();
        env.run_umask(mask, &["service", "install", "--sandbox"])
            .ok();
        for file in [env.unit_path(), env.sandbox_path()] {
            assert_eq!(mode(&file), 0o644, "umask {mask}: {}", file.display());
            for dir in dirs_down_to(&env, file.parent().unwrap()) {
                let m = mode(&dir);
                assert!(
                    m == 0o755 || m == 0o700,
                    "umask {mask}: {} is {m:o}",
                    dir.display()
                );
            }
        }

        let env = Env::new("launchd");
        env.run_umask(mask, &["service", "install"]).ok();
        assert_eq!(mode(&env.agent_path()), 0o644, "umask {mask}");
        let logs = env.home().join("Library/Logs");
        for dir in dirs_down_to(&env, env.agent_path().parent().unwrap())
            .into_iter()
            .chain([logs])
        {
            let m = mode(&dir);
            assert!(
                m == 0o755 || m == 0o700,
                "umask {mask}: {} is {m:o}",
                dir.display()
            );
        }
    }
}

#[test]
fn a_unit_directory_others_can_write_is_warned_about() {
    let env = Env::systemd();
    let dir = env.unit_path().parent().unwrap().to_path_buf();
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let run = env.run(&["service", "install"]).ok();
    assert!(
        run.err.contains("warning") && run.err.contains(&dir.display().to_string()),
        "{}",
        run.err
    );
    assert!(run.err.contains("chmod go-w"), "{}", run.err);
    // Not ours to change: the user made it so (and may share it on purpose).
    assert_eq!(mode(&dir), 0o777);
    assert_eq!(mode(&env.unit_path()), 0o644);
}

#[test]
fn uninstall_refuses_a_hand_edited_file_without_force() {
    let env = Env::systemd();
    env.run(&["service", "install", "--sandbox"]).ok();
    env.take_calls();
    for edited in [env.unit_path(), env.sandbox_path()] {
        let text = read(&edited) + "# mine\nNice=5\n";
        std::fs::write(&edited, &text).unwrap();
        let run = env.run(&["service", "uninstall"]).code(1);
        assert!(run.err.contains("edited by hand"), "{}", run.err);
        assert!(
            run.err.contains(&edited.display().to_string()) && run.err.contains("--force"),
            "{}",
            run.err
        );
        assert!(env.take_calls().is_empty(), "nothing is stopped either");
        assert!(env.unit_path().is_file() && env.sandbox_path().is_file());
        assert_eq!(read(&edited), text);
        env.run(&["service", "install", "--sandbox", "--force"])
            .ok();
        env.take_calls();
    }
    std::fs::write(env.unit_path(), read(&env.unit_path()) + "Nice=5\n").unwrap();
    env.run(&["service", "uninstall", "--force"]).ok();
    assert!(!env.unit_path().exists() && !env.sandbox_path().exists());

    let env = Env::new("launchd");
    env.run(&["service", "install"]).ok();
    let text = read(&env.agent_path()).replace("<true/>", "<false/>");
    std::fs::write(env.agent_path(), &text).unwrap();
    let run = env.run(&["service", "uninstall"]).code(1);
    assert!(run.err.contains("edited by hand"), "{}", run.err);
    assert_eq!(read(&env.agent_path()), text);
    env.run(&["service", "uninstall", "--force"]).ok();
    assert!(!env.agent_path().exists());
}

#[test]
fn a_linked_unit_is_written_through_the_link_and_uninstall_removes_only_the_link() {
    let env = Env::systemd();
    env.run(&["service", "install"]).ok();
    // The unit kept in a dotfiles repository, linked into place.
    let dotfiles = env.root.join("dotfiles/claude-tokend.service");
    std::fs::create_dir_all(dotfiles.parent().unwrap()).unwrap();
    std::fs::rename(env.unit_path(), &dotfiles).unwrap();
    symlink(&dotfiles, env.unit_path()).unwrap();

    let run = env
        .run(&["service", "install", "--refresh-before", "20m"])
        .ok();
    let link = std::fs::symlink_metadata(env.unit_path()).unwrap();
    assert!(
        link.file_type().is_symlink(),
        "the link stays:\n{}",
        run.out
    );
    assert!(
        has_line(
            &read(&dotfiles),
            "Environment=CLAUDE_TOKEND_REFRESH_BEFORE=20m"
        ),
        "the link's target has the new unit"
    );
    assert_eq!(mode(&dotfiles), 0o644);
    assert!(
        std::fs::read_dir(dotfiles.parent().unwrap())
            .unwrap()
            .count()
            == 1,
        "no temp file left beside the target"
    );

    // A target edited by hand is refused as a plain file would be.
    let edited = read(&dotfiles) + "Nice=5\n";
    std::fs::write(&dotfiles, &edited).unwrap();
    env.run(&["service", "install"]).code(1);
    env.run(&["service", "uninstall"]).code(1);
    assert_eq!(read(&dotfiles), edited);

    // Uninstall takes the link away, never what it points at (the user's repository).
    let run = env.run(&["service", "uninstall", "--force"]).ok();
    assert!(std::fs::symlink_metadata(env.unit_path()).is_err());
    assert_eq!(read(&dotfiles), edited, "{}", run.out);
    assert!(
        run.out.contains(&dotfiles.display().to_string()),
        "says what it left:\n{}",
        run.out
    );

    // The agent the same way.
    let env = Env::new("launchd");
    env.run(&["service", "install"]).ok();
    let dotfiles = env.root.join("dotfiles/agent.plist");
    std::fs::create_dir_all(dotfiles.parent().unwrap()).unwrap();
    std::fs::rename(env.agent_path(), &dotfiles).unwrap();
    symlink(&dotfiles, env.agent_path()).unwrap();
    env.run(&["service", "install", "--refresh-before", "20m"])
        .ok();
    assert!(
        std::fs::symlink_metadata(env.agent_path())
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(read(&dotfiles).contains("<string>20m</string>"));
    env.run(&["service", "uninstall"]).ok();
    assert!(std::fs::symlink_metadata(env.agent_path()).is_err());
    assert!(dotfiles.is_file());
}

#[test]
fn a_file_with_our_content_that_others_may_write_gets_its_mode_fixed() {
    let env = Env::systemd();
    env.run(&["service", "install", "--sandbox"]).ok();
    for file in [env.unit_path(), env.sandbox_path()] {
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
    }
    let run = env.run(&["service", "install", "--sandbox"]).ok();
    for file in [env.unit_path(), env.sandbox_path()] {
        let shown = file.display().to_string();
        assert!(
            run.out.contains(&format!("Unchanged: {shown}"))
                && run.out.contains(&format!("Fixed the mode of {shown}")),
            "{}",
            run.out
        );
        assert_eq!(mode(&file), 0o644, "{shown}");
    }
    // A mode only its owner writes is left as it is.
    std::fs::set_permissions(env.unit_path(), std::fs::Permissions::from_mode(0o600)).unwrap();
    let run = env.run(&["service", "install", "--sandbox"]).ok();
    assert!(!run.out.contains("Fixed the mode"), "{}", run.out);
    assert_eq!(mode(&env.unit_path()), 0o600);

    let env = Env::new("launchd");
    env.run(&["service", "install"]).ok();
    std::fs::set_permissions(env.agent_path(), std::fs::Permissions::from_mode(0o666)).unwrap();
    let run = env.run(&["service", "install"]).ok();
    assert!(run.out.contains("Fixed the mode of"), "{}", run.out);
    assert_eq!(mode(&env.agent_path()), 0o644);
}

#[test]
fn every_directory_others_may_write_up_to_home_is_warned_about() {
    // The unit under ~/.config (no XDG_CONFIG_HOME), its own directory 0755.
    let env = Env::new("systemd");
    let config = env.home().join(".config");
    let systemd = config.join("systemd");
    let unit_dir = systemd.join("user");
    std::fs::create_dir_all(&unit_dir).unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::set_permissions(&systemd, std::fs::Permissions::from_mode(0o775)).unwrap();
    std::fs::set_permissions(&unit_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(env.home(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let run = env.run(&["service", "install"]).ok();
    let warned = |dir: &Path| {
        run.err
            .lines()
            .any(|l| l.contains("warning") && l.ends_with(&format!("chmod go-w {}", dir.display())))
    };
    assert!(warned(&config), "{}", run.err);
    assert!(warned(&systemd), "{}", run.err);
    assert!(!warned(&unit_dir) && !warned(&env.home()), "{}", run.err);
    assert!(run.err.contains("everyone") && run.err.contains("its group"));

    // HOME itself counts; a sticky directory (as /tmp is) does not: only a file's owner may
    // rename it there.
    std::fs::set_permissions(env.home(), std::fs::Permissions::from_mode(0o775)).unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let run = env.run(&["service", "install"]).ok();
    let warned = |dir: &Path| {
        run.err
            .lines()
            .any(|l| l.ends_with(&format!("chmod go-w {}", dir.display())))
    };
    assert!(warned(&env.home()), "{}", run.err);
    assert!(!warned(&config), "{}", run.err);
    std::fs::set_permissions(env.home(), std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn a_directory_others_may_write_where_a_link_on_the_way_leads_is_warned_about() {
    // ~/.config is a link into a directory everyone may write: whoever writes S can put
    // another cfg (and unit) in place.
    let env = Env::new("systemd");
    let shared = env.root.join("S");
    std::fs::create_dir_all(shared.join("cfg")).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    symlink(shared.join("cfg"), env.home().join(".config")).unwrap();
    let run = env.run(&["service", "install"]).ok();
    assert!(
        run.err
            .lines()
            .any(|l| l.contains("warning")
                && l.ends_with(&format!("chmod go-w {}", shared.display()))),
        "{}",
        run.err
    );
    assert!(shared.join("cfg/systemd/user").join(UNIT).is_file());

    // Through a link to a link, and for the unit itself linked into such a directory.
    let env = Env::systemd();
    let shared = env.root.join("T");
    let dotfiles = shared.join("dotfiles");
    std::fs::create_dir_all(&dotfiles).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o770)).unwrap();
    symlink(&dotfiles, env.root.join("hop")).unwrap();
    std::fs::create_dir_all(env.unit_path().parent().unwrap()).unwrap();
    std::fs::write(dotfiles.join(UNIT), "").unwrap();
    std::fs::remove_file(dotfiles.join(UNIT)).unwrap();
    env.run(&["service", "install"]).ok();
    std::fs::rename(env.unit_path(), dotfiles.join(UNIT)).unwrap();
    symlink(env.root.join("hop").join(UNIT), env.unit_path()).unwrap();
    let run = env
        .run(&["service", "install", "--refresh-before", "20m"])
        .ok();
    assert!(
        run.err
            .lines()
            .any(|l| l.contains("its group")
                && l.ends_with(&format!("chmod go-w {}", shared.display()))),
        "{}",
        run.err
    );
}
