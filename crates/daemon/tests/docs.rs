//! What a user reads and what their shell runs, generated from the clap definition: the shell
//! completion scripts and the man page.

use std::path::Path;
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

// ---------------------------------------------------------------------------------------------
// the launchd agent as XML

/// Parses `text` as XML the way the spec says, no leniency: roxmltree refuses what a browser
/// or the `plist` crate would let pass, such as `--` inside a comment. The DTD line of a plist
/// is allowed (it is only declared, never fetched).
#[track_caller]
fn strict_xml(what: &str, text: &str) {
    let options = roxmltree::ParsingOptions {
        allow_dtd: true,
        ..roxmltree::ParsingOptions::default()
    };
    if let Err(e) = roxmltree::Document::parse_with_options(text, options) {
        panic!("{what} is not well-formed XML: {e}\n{text}");
    }
}

#[test]
fn the_agent_template_is_well_formed_xml() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../launchd/io.github.claude-tokend.plist");
    strict_xml("launchd/io.github.claude-tokend.plist", &read(&path));
}

#[test]
fn the_rendered_agent_is_well_formed_xml_with_awkward_paths_and_settings() {
    let mut env = Env::new("launchd");
    // Everything XML or a comment could choke on that a path or setting may hold (`"` and `\`
    // are refused outright; see `bad_service_command_lines_exit_2`).
    let odd = "a&b <c> 'd' --e-- -->";
    let home = env.root.join(format!("home {odd}"));
    std::fs::create_dir_all(&home).unwrap();
    let config = env.root.join(format!("config {odd}"));
    env.set("HOME", &home.display().to_string())
        .set("CLAUDE_CONFIG_DIR", &config.display().to_string());
    let agent_ua = format!("ua {odd}");
    env.run(&[
        "service",
        "install",
        "--credentials",
        &format!("creds {odd}.json"),
        "--user-agent",
        &agent_ua,
        "--refresh-before",
        "20m",
    ])
    .ok();
    let agent = home
        .join("Library/LaunchAgents")
        .join(format!("{LABEL}.plist"));
    let text = read(&agent);
    strict_xml("the rendered agent", &text);

    // And the values read back exactly, through a plist reader.
    let v = plist::Value::from_file(&agent).expect("a plist");
    let vars = v.as_dictionary().unwrap()["EnvironmentVariables"]
        .as_dictionary()
        .unwrap();
    let creds = env.root.join(format!("creds {odd}.json"));
    for (key, want) in [
        ("HOME", home.display().to_string()),
        ("CLAUDE_CONFIG_DIR", config.display().to_string()),
        ("CLAUDE_TOKEND_CREDENTIALS", creds.display().to_string()),
        ("CLAUDE_TOKEND_USER_AGENT", agent_ua.clone()),
        ("CLAUDE_TOKEND_REFRESH_BEFORE", "20m".to_owned()),
    ] {
        assert_eq!(vars[key].as_string(), Some(want.as_str()), "{key}");
    }
}
