//! Service files that are links, and what is at their paths when it is not a regular file: a
//! mask (a link to /dev/null, what `systemctl --user mask` makes) is never written through or
//! taken away; a link to a FIFO or a device is never written through, `--force` or not; a
//! broken link (dangling, a loop) or one to a directory is replaced by a plain file only with
//! `--force`, which never writes through it; every refusal names the link and its target, and
//! says what to do.

use std::os::unix::fs::{FileTypeExt, symlink};
use std::path::{Path, PathBuf};

mod common;

use common::*;

/// A null device to mask with: see [`device`].
fn null_device(env: &Env) -> PathBuf {
    device(env, "null", 3)
}

/// The character device `/dev/<name>` (major 1, `minor`). As a normal user, that device itself
/// (which the user cannot replace: a bug cannot damage it). As root, who could, a private node
/// made like it (systemd takes any link to a character device for a mask), so that a
/// regression writes into the test's own node, never into the machine's /dev.
fn device(env: &Env, name: &str, minor: u32) -> PathBuf {
    if euid() != 0 {
        return Path::new("/dev").join(name);
    }
    let node = env.root.join(name);
    let c = std::ffi::CString::new(node.to_str().unwrap()).unwrap();
    // SAFETY: mknod(2) with a valid path; makedev(1, minor) is a memory device.
    let made = unsafe {
        libc::mknod(
            c.as_ptr(),
            libc::S_IFCHR | 0o666,
            libc::makedev(1, minor as _),
        )
    };
    assert_eq!(
        made,
        0,
        "root could not make a device node for the test: {}",
        std::io::Error::last_os_error()
    );
    node
}

fn is_link_to(path: &Path, target: &Path) -> bool {
    std::fs::read_link(path).is_ok_and(|t| t == target)
}

fn is_char_device(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_char_device())
}

#[test]
fn a_masked_unit_is_never_written_or_removed_even_with_force() {
    let mut env = Env::systemd();
    let null = null_device(&env);
    std::fs::create_dir_all(env.unit_path().parent().unwrap()).unwrap();
    symlink(&null, env.unit_path()).unwrap();

    for args in [
        &["service", "install"][..],
        &["service", "install", "--force"],
        &["service", "install", "--force", "--sandbox", "--now"],
    ] {
        let run = env.run(args).code(1);
        assert!(
            run.err.contains("masked") && run.err.contains("systemctl --user unmask claude-tokend"),
            "{args:?}: {}",
            run.err
        );
        assert!(is_link_to(&env.unit_path(), &null), "{args:?}");
        assert!(
            is_char_device(&null),
            "{args:?}: the null device was written"
        );
        assert!(!env.sandbox_path().exists(), "{args:?}: nothing is written");
        assert!(env.take_calls().is_empty());
    }

    // A mask hides the package's unit too: no drop-in is written onto it either.
    let pkg = env.root.join("pkg");
    std::fs::create_dir_all(&pkg).unwrap();
    std::fs::write(
        pkg.join(UNIT),
        "[Service]\nExecStart=/usr/bin/claude-tokend\n",
    )
    .unwrap();
    require_seams();
    env.set(
        "CLAUDE_TOKEND_TEST_PACKAGED_UNIT_DIR",
        &pkg.display().to_string(),
    );
    let run = env.run(&["service", "install", "--force"]).code(1);
    assert!(run.err.contains("unmask"), "{}", run.err);
    assert!(is_link_to(&env.unit_path(), &null));
    assert!(!env.sandbox_path().parent().unwrap().exists());

    // Uninstall keeps it (taking it away would let the package's unit start), and says so.
    for args in [
        &["service", "uninstall"][..],
        &["service", "uninstall", "--force"],
    ] {
        let run = env.run(args).ok();
        assert!(is_link_to(&env.unit_path(), &null), "{args:?}: {}", run.out);
        assert!(
            run.out.contains("Kept:") && run.out.contains("unmask"),
            "{}",
            run.out
        );
    }
    env.set("FAKE_RUNNING", "1");
    let run = env.run(&["service", "status"]).ok();
    assert!(run.out.contains("masked"), "{}", run.out);
}

#[test]
fn a_linked_file_is_named_with_its_target_and_replaced_only_with_force() {
    let env = Env::systemd();
    // A link to a system file (an /etc/passwd stand-in), not to a unit of the user's.
    let system = env.root.join("etc/passwd");
    std::fs::create_dir_all(system.parent().unwrap()).unwrap();
    std::fs::write(&system, "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::create_dir_all(env.unit_path().parent().unwrap()).unwrap();
    symlink(&system, env.unit_path()).unwrap();

    let run = env.run(&["service", "install"]).code(1);
    let both = format!(
        "{} (a link to {})",
        env.unit_path().display(),
        system.display()
    );
    assert!(
        run.err.contains(&both),
        "the refusal names both:\n{}",
        run.err
    );
    assert_eq!(read(&system), "root:x:0:0:root:/root:/bin/sh\n");

    let run = env.run(&["service", "install", "--force"]).ok();
    assert!(
        run.out.contains(&format!("Replaced: {both}")),
        "Replaced: names both:\n{}",
        run.out
    );
    assert!(is_link_to(&env.unit_path(), &system));
}

/// What a link may lead to that is no file, or nowhere; made at `path`.
#[derive(Clone, Copy, Debug)]
enum Odd {
    Fifo,
    Device,
    Directory,
    DanglingIntoMissingDir,
    Loop,
}

/// Makes the link at `path` and what it leads to; the target.
fn make(env: &Env, odd: Odd, path: &Path) -> PathBuf {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let target = match odd {
        Odd::Fifo => {
            let fifo = env.root.join("fifo");
            let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
            // SAFETY: mkfifo(3) with a valid path.
            assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
            fifo
        }
        Odd::Device => device(env, "zero", 5),
        Odd::Directory => {
            let dir = env.root.join("a-dir");
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("kept"), "kept").unwrap();
            dir
        }
        Odd::DanglingIntoMissingDir => env.root.join("missing-dir/file"),
        Odd::Loop => path.to_path_buf(),
    };
    symlink(&target, path).unwrap();
    target
}

/// The target is as it was made: nothing was written through the link.
#[track_caller]
fn untouched(env: &Env, odd: Odd, target: &Path) {
    match odd {
        Odd::Fifo => assert!(std::fs::metadata(target).unwrap().file_type().is_fifo()),
        Odd::Device => assert!(is_char_device(target)),
        Odd::Directory => {
            assert!(target.is_dir());
            assert_eq!(std::fs::read_dir(target).unwrap().count(), 1);
        }
        Odd::DanglingIntoMissingDir => assert!(!env.root.join("missing-dir").exists()),
        Odd::Loop => {}
    }
}

#[test]
fn links_to_what_is_no_file_are_never_written_through() {
    for manager in ["systemd", "launchd"] {
        for odd in [
            Odd::Fifo,
            Odd::Device,
            Odd::Directory,
            Odd::DanglingIntoMissingDir,
            Odd::Loop,
        ] {
            for which in ["unit", "sandbox"] {
                if manager == "launchd" && which == "sandbox" {
                    continue;
                }
                let env = if manager == "systemd" {
                    Env::systemd()
                } else {
                    Env::new(manager)
                };
                let path = match (manager, which) {
                    ("launchd", _) => env.agent_path(),
                    (_, "unit") => env.unit_path(),
                    _ => env.sandbox_path(),
                };
                let what = format!("{manager} {which} {odd:?}");
                let target = make(&env, odd, &path);
                let mut args = vec!["service", "install"];
                if which == "sandbox" {
                    args.push("--sandbox");
                }
                let run = env.run(&args).code(1);
                let named = path.display().to_string();
                assert!(
                    run.err.contains(&named),
                    "{what}: names the link:\n{}",
                    run.err
                );
                if !matches!(odd, Odd::Loop) {
                    assert!(
                        run.err.contains(&target.display().to_string()),
                        "{what}: names the target:\n{}",
                        run.err
                    );
                }
                assert!(
                    !run.err.contains("edited by hand"),
                    "{what}: says what it is:\n{}",
                    run.err
                );
                untouched(&env, odd, &target);

                args.push("--force");
                let run = env.run(&args);
                untouched(&env, odd, &target);
                match odd {
                    // Something someone made on purpose: --force does not take it away.
                    Odd::Fifo | Odd::Device => {
                        let run = run.code(1);
                        assert!(run.err.contains("rm "), "{what}: {}", run.err);
                        assert!(std::fs::read_link(&path).is_ok(), "{what}");
                    }
                    // Broken, or a directory: the link itself becomes a plain file.
                    _ => {
                        let run = run.ok();
                        let meta = std::fs::symlink_metadata(&path).unwrap();
                        assert!(meta.is_file(), "{what}: {}", run.out);
                        assert!(run.out.contains(&named), "{what}: {}", run.out);
                    }
                }
            }
        }
    }
}

#[test]
fn a_self_looping_unit_link_is_explained_and_uninstall_force_removes_it() {
    let mut env = Env::systemd();
    std::fs::create_dir_all(env.unit_path().parent().unwrap()).unwrap();
    symlink(env.unit_path(), env.unit_path()).unwrap();

    let run = env.run(&["service", "install"]).code(1);
    assert!(run.err.contains("--force"), "{}", run.err);
    env.set("FAKE_RUNNING", "1");
    let run = env.run(&["service", "status"]).ok();
    assert!(run.out.contains("loops"), "{}", run.out);
    let run = env.run(&["service", "uninstall"]).code(1);
    assert!(run.err.contains("--force"), "{}", run.err);
    assert!(std::fs::read_link(env.unit_path()).is_ok());
    let run = env.run(&["service", "uninstall", "--force"]).ok();
    assert!(
        std::fs::symlink_metadata(env.unit_path()).is_err(),
        "{}",
        run.out
    );
    assert!(run.out.contains("Removed:"), "{}", run.out);

    // The launchd agent the same way.
    let env = Env::new("launchd");
    std::fs::create_dir_all(env.agent_path().parent().unwrap()).unwrap();
    symlink(env.agent_path(), env.agent_path()).unwrap();
    env.run(&["service", "uninstall"]).code(1);
    env.run(&["service", "uninstall", "--force"]).ok();
    assert!(std::fs::symlink_metadata(env.agent_path()).is_err());
}

#[test]
fn a_dangling_sandbox_link_is_not_taken_for_an_earlier_sandbox() {
    let env = Env::systemd();
    env.run(&["service", "install"]).ok();
    let target = env.root.join("gone/sandbox.conf");
    std::fs::create_dir_all(env.sandbox_path().parent().unwrap()).unwrap();
    symlink(&target, env.sandbox_path()).unwrap();
    let unit = read(&env.unit_path());

    let run = env
        .run(&["service", "install", "--refresh-before", "20m"])
        .code(1);
    assert!(
        run.err.contains(&target.display().to_string()) && run.err.contains("--force"),
        "{}",
        run.err
    );
    assert!(!env.root.join("gone").exists(), "written through the link");
    assert_eq!(read(&env.unit_path()), unit, "nothing is written");
}

#[test]
fn an_empty_unit_is_a_mask_as_systemd_reads_it() {
    // systemd.unit(5): a unit file that is empty (or a link to /dev/null) is masked.
    let mut env = Env::systemd();
    let dir = env.unit_path().parent().unwrap().to_path_buf();
    std::fs::create_dir_all(&dir).unwrap();
    let elsewhere = env.root.join("empty.service");
    std::fs::write(&elsewhere, "").unwrap();
    for linked in [false, true] {
        if linked {
            std::fs::remove_file(env.unit_path()).unwrap();
            symlink(&elsewhere, env.unit_path()).unwrap();
        } else {
            std::fs::write(env.unit_path(), "").unwrap();
        }
        for args in [
            &["service", "install"][..],
            &["service", "install", "--force"],
            &["service", "install", "--force", "--sandbox", "--now"],
        ] {
            let run = env.run(args).code(1);
            assert!(
                run.err.contains("masked")
                    && run.err.contains("systemctl --user unmask claude-tokend"),
                "{linked} {args:?}: {}",
                run.err
            );
            assert!(!run.err.contains("edited by hand"), "{}", run.err);
            assert_eq!(read(&env.unit_path()), "", "{linked} {args:?}");
            assert!(!env.sandbox_path().exists(), "{args:?}: nothing is written");
            assert!(env.take_calls().is_empty());
        }
        for args in [
            &["service", "uninstall"][..],
            &["service", "uninstall", "--force"],
        ] {
            let run = env.run(args).ok();
            assert!(
                std::fs::symlink_metadata(env.unit_path()).is_ok(),
                "{linked} {args:?}: the mask was removed\n{}",
                run.out
            );
            assert!(
                run.out.contains("Kept:") && run.out.contains("unmask"),
                "{}",
                run.out
            );
        }
        env.set("FAKE_RUNNING", "1");
        let run = env.run(&["service", "status"]).ok();
        assert!(run.out.contains("masked"), "{}", run.out);
        env.unset("FAKE_RUNNING");
        env.take_calls();
    }

    // An empty drop-in is to systemd what one linked to /dev/null is: it adds nothing, and
    // hides any drop-in of its name in a directory read after this one. Both are the user's way
    // to go without the sandbox: kept, never written unless the user removes it.
    let env = Env::systemd();
    env.run(&["service", "install"]).ok();
    std::fs::create_dir_all(env.sandbox_path().parent().unwrap()).unwrap();
    std::fs::write(env.sandbox_path(), "").unwrap();
    let run = env
        .run(&["service", "install", "--refresh-before", "20m"])
        .ok();
    assert_eq!(read(&env.sandbox_path()), "", "{}", run.out);
    for args in [
        &["service", "install", "--sandbox"][..],
        &["service", "install", "--sandbox", "--force"],
    ] {
        let run = env.run(args).code(1);
        assert!(
            run.err.contains("masked") && run.err.contains("rm "),
            "{args:?}: {}",
            run.err
        );
        assert_eq!(read(&env.sandbox_path()), "");
    }
    let run = env.run(&["service", "uninstall", "--force"]).ok();
    assert!(!env.unit_path().exists(), "{}", run.out);
    assert_eq!(read(&env.sandbox_path()), "", "the empty drop-in is kept");
    assert!(run.out.contains("Kept:"), "{}", run.out);
}

#[test]
fn a_link_through_linked_directories_is_named_by_where_it_really_leads() {
    let env = Env::systemd();
    // The link names a harmless-looking directory, itself a link to a system one.
    let real = env.root.join("etc/passwd");
    std::fs::create_dir_all(real.parent().unwrap()).unwrap();
    std::fs::write(&real, "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    symlink(env.root.join("etc"), env.root.join("dotfiles")).unwrap();
    std::fs::create_dir_all(env.unit_path().parent().unwrap()).unwrap();
    symlink(env.root.join("dotfiles/passwd"), env.unit_path()).unwrap();
    let run = env.run(&["service", "install"]).code(1);
    assert!(
        run.err.contains(&format!(
            "{} (a link to {})",
            env.unit_path().display(),
            real.display()
        )),
        "names where it really leads:\n{}",
        run.err
    );
    assert_eq!(read(&real), "root:x:0:0:root:/root:/bin/sh\n");
}
