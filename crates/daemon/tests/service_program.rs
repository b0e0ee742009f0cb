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

/// The binary at `<root>/<dir>/claude-tokend`: a hard link (the same file, so `current_exe`
/// reports this path), else a copy.
fn binary_in(env: &Env, dir: &str) -> std::path::PathBuf {
    let dir = env.root.join(dir);
    std::fs::create_dir_all(&dir).unwrap();
    let program = dir.join("claude-tokend");
    std::fs::hard_link(BIN, &program)
        .or_else(|_| std::fs::copy(BIN, &program).map(|_| ()))
        .unwrap();
    program
}

/// systemd refuses to run a program whose path has a quote, a backslash or a tab in it
/// ("Executable name contains special characters", a fatal unit error): such a path is never
/// written into a unit. The resolved path stands in when it is plain; with none, the install
/// is refused (exit 2) before anything is written. launchd runs them all.
#[test]
fn a_program_path_systemd_refuses_is_never_written_into_a_unit() {
    for c in ["'", "\"", "\\", "\t"] {
        let env = Env::systemd();
        let program = binary_in(&env, &format!("x/quo{c}te"));
        let run = env.run_as(&program, None, &["service", "install"]).code(2);
        assert!(
            run.err.contains("plain path") && run.err.contains("nothing was written"),
            "{c:?}: {}",
            run.err
        );
        assert!(!env.unit_path().exists(), "{c:?}");
        // systemd does refuse it: a unit written by hand with that path does not verify.
        let unit = env.root.join("hand.service");
        let quoted = program
            .to_str()
            .unwrap()
            .replace('\\', "\\\\")
            .replace('"', "\\\"");
        std::fs::write(&unit, format!("[Service]\nExecStart=\"{quoted}\"\n")).unwrap();
        if let Some(complaints) = systemd_verify(&env, &unit) {
            assert!(
                complaints.contains("special characters"),
                "{c:?}: systemd took it: {complaints}"
            );
        }

        // launchd takes it.
        let env = Env::new("launchd");
        let program = binary_in(&env, &format!("x/quo{c}te"));
        env.run_as(&program, None, &["service", "install"]).ok();
        let plist = read(&env.agent_path());
        let v: plist::Value = plist::from_bytes(plist.as_bytes()).expect("a valid plist");
        let args = v.as_dictionary().unwrap()["ProgramArguments"]
            .as_array()
            .unwrap()
            .clone();
        assert_eq!(args[0].as_string(), program.to_str(), "{c:?}");
    }

    // Run through a link whose path systemd refuses, to a plain path: the plain one is used.
    let env = Env::systemd();
    let link = link_to(&env, "bin'q", Path::new(BIN));
    let run = env
        .run_as(Path::new(&link), None, &["service", "install"])
        .ok();
    assert_eq!(exec_program(&env), resolved_program(), "{}", run.err);
    assert!(run.err.contains("systemd"), "says why:\n{}", run.err);

    // What systemd takes (a space, `$`, `;`, `*`, `é`) is kept, and the unit verifies.
    let env = Env::systemd();
    let program = binary_in(&env, "x/a b$c;d*é");
    env.run_as(&program, None, &["service", "install"]).ok();
    assert_eq!(exec_program(&env), program.display().to_string());
    if let Some(complaints) = systemd_verify(&env, &env.unit_path()) {
        assert!(complaints.is_empty(), "systemd-analyze: {complaints}");
    }
}
