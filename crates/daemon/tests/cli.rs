//! The binary's command line, run as a process. (This file also makes `cargo test --workspace`
//! build the binary before any test runs, which the end-to-end suite in `tests/` relies on.)

use std::process::Command;

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_claude-tokend"))
        .args(args)
        .env_clear()
        .env("HOME", "/nonexistent-home-for-cli-tests")
        .output()
        .expect("run claude-tokend");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_names_every_command_and_setting() {
    let (code, out, _) = run(&["--help"]);
    assert_eq!(code, 0);
    for word in [
        "--once",
        "refresh",
        "status",
        "--credentials",
        "--token-url",
        "--client-id",
        "--refresh-before",
        "--user-agent",
        "CLAUDE_TOKEND_TOKEN_URL",
        "Exit codes",
    ] {
        assert!(out.contains(word), "--help lacks {word}:\n{out}");
    }
}

#[test]
fn version_prints_the_package_version() {
    let (code, out, _) = run(&["--version"]);
    assert_eq!(code, 0);
    assert_eq!(
        out.trim(),
        format!("claude-tokend {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn bad_command_lines_exit_2() {
    for args in [
        &["--no-such-flag"][..],
        &["--once", "refresh"],
        &["status", "--refresh-before", "15"],
        &["--once", "--token-url", "http://example.com/token"],
        &["-v", "-q", "status"],
        &["--once", "--retry-budget", "999999999999999d"],
        &["status", "--refresh-before", "5h"],
    ] {
        let (code, _, err) = run(args);
        assert_eq!(code, 2, "{args:?} should exit 2; stderr: {err}");
        assert!(!err.is_empty(), "{args:?} should say why");
    }
}

/// A subcommand's own variable is checked and named like the global ones.
#[test]
fn a_bad_subcommand_variable_is_named() {
    let out = Command::new(env!("CARGO_BIN_EXE_claude-tokend"))
        .args(["service", "status"])
        .env_clear()
        .env("HOME", "/nonexistent-home-for-cli-tests")
        .env("CLAUDE_TOKEND_SERVICE_MANAGER", "bogus")
        .output()
        .expect("run claude-tokend");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(
            "invalid value 'bogus' for CLAUDE_TOKEND_SERVICE_MANAGER: use one of systemd, launchd"
        ),
        "{err}"
    );
}

/// `--credentials`'s help names every place the default can come from, Claude Code's
/// `CLAUDE_SECURESTORAGE_CONFIG_DIR` first (it wins over `CLAUDE_CONFIG_DIR`).
#[test]
fn help_for_credentials_names_where_the_default_comes_from() {
    let (code, out, _) = run(&["--help"]);
    assert_eq!(code, 0);
    let text = out.split_whitespace().collect::<Vec<_>>().join(" ");
    let at = text
        .find("--credentials <PATH>")
        .expect("--credentials in --help");
    let help = &text[at..at + 600.min(text.len() - at)];
    let secure = help
        .find("CLAUDE_SECURESTORAGE_CONFIG_DIR")
        .unwrap_or_else(|| {
            panic!("--credentials' help lacks CLAUDE_SECURESTORAGE_CONFIG_DIR: {help}")
        });
    let config = help.find("CLAUDE_CONFIG_DIR").expect("CLAUDE_CONFIG_DIR");
    assert!(secure < config, "in the order they apply: {help}");
}
