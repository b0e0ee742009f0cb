//! What a user reads and what their shell runs, generated from the clap definition: the shell
//! completion scripts and the man page.

use std::process::Command;

mod common;

use common::*;

// ---------------------------------------------------------------------------------------------
// completions and the man page

#[test]
fn completions_cover_the_commands_and_flags() {
    let env = Env::systemd();
    // Each shell spells a long flag its own way: fish as `-l credentials`.
    for (shell, marker, flag) in [
        ("bash", "complete -F", "--credentials"),
        ("zsh", "#compdef claude-tokend", "--credentials"),
        ("fish", "complete -c claude-tokend", "-l credentials"),
    ] {
        let run = env.run(&["completions", shell]).ok();
        assert!(run.out.contains(marker), "{shell}: no {marker}");
        for word in [
            "service",
            "install",
            "uninstall",
            "status",
            "completions",
            flag,
        ] {
            assert!(run.out.contains(word), "{shell} completion lacks {word}");
        }
    }
    // The bash script at least parses.
    let script = env.root.join("completion.bash");
    std::fs::write(&script, env.run(&["completions", "bash"]).ok().out).unwrap();
    let check = Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "bash -n: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    env.run(&["completions", "tcsh"]).code(2);
    env.run(&["completions"]).code(2);
}

#[test]
fn man_page_is_roff_from_the_cli_definition() {
    let env = Env::systemd();
    let run = env.run(&["man"]).ok();
    let page = run.out;
    assert!(page.contains(".TH claude-tokend 1"), "{page}");
    for section in [".SH NAME", ".SH SYNOPSIS", ".SH OPTIONS", ".SH SUBCOMMANDS"] {
        assert!(page.contains(section), "no {section}");
    }
    for word in [r"\-\-credentials", r"\-\-once", "service", "Exit codes"] {
        assert!(page.contains(word), "man page lacks {word}");
    }

    let dir = env.root.join("man1");
    env.run(&["man", "--dir", &dir.display().to_string()]).ok();
    for page in [
        "claude-tokend.1",
        "claude-tokend-service.1",
        "claude-tokend-service-install.1",
    ] {
        let text = read(&dir.join(page));
        assert!(text.contains(".TH"), "{page} is not roff");
    }
}
