//! Which path the service runs the program by: the one the user ran it from (a link into a
//! versioned directory, as Homebrew, Nix or an unpacked archive make, survives the next
//! upgrade), when that path leads to the running program; the resolved path otherwise.

use std::os::unix::fs::symlink;
use std::path::Path;

mod common;

use common::*;

/// A link to the binary at `<root>/<dir>/claude-tokend`, its path.
fn link_to(env: &Env, dir: &str, target: &Path) -> String {
    let dir = env.root.join(dir);
    std::fs::create_dir_all(&dir).unwrap();
    let link = dir.join("claude-tokend");
    symlink(target, &link).unwrap();
    link.display().to_string()
}

fn exec_program(env: &Env) -> String {
    unit_exec_start(&read(&env.unit_path()))[0].clone()
}

#[test]
fn the_service_runs_the_link_the_user_ran_when_it_leads_to_this_program() {
    let mut env = Env::systemd();
    // A link to a link to the binary: ~/bin/claude-tokend -> versions/current -> the build.
    let current = link_to(&env, "versions/current", Path::new(BIN));
    let link = link_to(&env, "bin", Path::new(&current));
    assert_ne!(link, resolved_program());

    // Run by its absolute path.
    env.run_as(Path::new(&link), None, &["service", "install"])
        .ok();
    assert_eq!(exec_program(&env), link, "{}", read(&env.unit_path()));

    // Run by a bare name, as PATH found it.
    let bin_dir = env.root.join("bin").display().to_string();
    let path = format!("{bin_dir}:{}:/usr/bin:/bin", fakes().display());
    env.set("PATH", &path);
    std::fs::remove_file(env.unit_path()).unwrap();
    env.run_as(Path::new("claude-tokend"), None, &["service", "install"])
        .ok();
    assert_eq!(exec_program(&env), link, "{}", read(&env.unit_path()));

    // Run by a relative path (from the test's directory, the env root): made absolute.
    std::fs::remove_file(env.unit_path()).unwrap();
    env.run_as(
        Path::new(BIN),
        Some("./bin/claude-tokend"),
        &["service", "install"],
    )
    .ok();
    assert_eq!(exec_program(&env), link, "{}", read(&env.unit_path()));

    // launchd's ProgramArguments the same way.
    let env = Env::new("launchd");
    let link = link_to(&env, "bin", Path::new(BIN));
    env.run_as(Path::new(&link), None, &["service", "install"])
        .ok();
    let plist = read(&env.agent_path());
    assert!(
        plist.contains(&format!("<string>{link}</string>")),
        "ProgramArguments is not {link}:\n{plist}"
    );
    assert!(!plist.contains(&resolved_program()), "{plist}");
}

#[test]
fn a_path_that_leads_to_another_file_gives_the_resolved_path() {
    let mut env = Env::systemd();
    // An older release the link still points at: not the program that is running.
    let old = env.root.join("versions/0.9/claude-tokend");
    std::fs::create_dir_all(old.parent().unwrap()).unwrap();
    std::fs::write(&old, "#!/bin/sh\nexit 0\n").unwrap();
    let link = link_to(&env, "bin", &old);

    // argv[0] names the link, but the program running is the build.
    env.run_as(Path::new(BIN), Some(&link), &["service", "install"])
        .ok();
    assert_eq!(exec_program(&env), resolved_program());

    // A bare name PATH resolves to the other file.
    let bin_dir = env.root.join("bin").display().to_string();
    env.set(
        "PATH",
        &format!("{bin_dir}:{}:/usr/bin:/bin", fakes().display()),
    );
    env.run_as(
        Path::new(BIN),
        Some("claude-tokend"),
        &["service", "install"],
    )
    .ok();
    assert_eq!(exec_program(&env), resolved_program());

    // A name PATH does not find at all.
    env.run_as(
        Path::new(BIN),
        Some("no-such-tokend"),
        &["service", "install"],
    )
    .ok();
    assert_eq!(exec_program(&env), resolved_program());
}
