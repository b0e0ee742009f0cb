//! Small things a new user tripped over (issue 16's papercuts), each through the built binary:
//! warnings about settings reach `--once -v`, one-shot log lines read like the program's other
//! messages, a `~` in `CLAUDE_TOKEND_CONFIG_DIRS` means the home directory, and `--notify
//! desktop` without `notify-send` says so when the daemon starts.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use claude_tokend_e2e::*;

const SOON: Duration = Duration::from_secs(20);

/// A HOME with a fresh login, and a server any request to which would show.
fn fresh_home() -> (TempHome, Login, TokenServer) {
    let home = TempHome::new();
    let login = Login::fresh();
    home.write_creds(&login.doc());
    let server = TokenServer::for_login(&login);
    (home, login, server)
}

// ---------------------------------------------------------------------------------------------
// Warnings and log lines of the one-shot commands

/// Contract: warnings about settings are printed by `--once` only with `-v`. So cron stays
/// silent, and `--once -v` (what a cron user runs to see why) shows the short-lead warning.
#[test]
fn the_short_lead_warning_reaches_once_with_v_only() {
    let (home, _login, server) = fresh_home();
    let out = Cmd::new(&home)
        .server(&server)
        .args(["--once", "--refresh-before", "2m"])
        .run();
    out.expect_code(0).expect_silent();

    for cmd in [
        Cmd::new(&home)
            .server(&server)
            .args(["--once", "-v", "--refresh-before", "2m"]),
        Cmd::new(&home)
            .server(&server)
            .args(["--once", "-v"])
            .env("CLAUDE_TOKEND_REFRESH_BEFORE", "2m"),
    ] {
        let out = cmd.run();
        out.expect_code(0)
            .expect_stderr_contains("shorter than Claude Code's own 5-minute margin")
            .check_eq("requests", server.count(), 0);
    }
}

/// One-shot commands' log lines look like the program's other messages (`claude-tokend:
/// warning: …`), not like a daemon's log with a padded level (` WARN …`), and `-v` names the
/// expiry once (`expires=expires …` was the field's name and its value both).
#[test]
fn one_shot_log_lines_begin_with_the_program_name_and_say_expires_once() {
    let (home, _login, server) = fresh_home();
    let out = Cmd::new(&home)
        .server(&server)
        .args(["--once", "-v", "--refresh-before", "2m"])
        .run();
    out.expect_code(0);
    let lines: Vec<&str> = out.stderr.lines().collect();
    out.check(lines.len() >= 2, "a warning and what it did");
    for line in &lines {
        out.check(
            line.starts_with("claude-tokend: "),
            format!("the line {line:?} begins with the program's name"),
        );
    }
    out.expect_stderr_contains("claude-tokend: warning: --refresh-before")
        .check(
            !out.stderr.contains("expires=expires") && out.stderr.contains("expires "),
            "the expiry is named once",
        );

    // `-vv` (debug) and RUST_LOG alike.
    let out = Cmd::new(&home)
        .server(&server)
        .args(["--once"])
        .env("RUST_LOG", "debug")
        .run();
    out.expect_code(0);
    for line in out.stderr.lines() {
        out.check(
            !line.starts_with(char::is_whitespace),
            format!("{line:?} begins with a space"),
        );
    }
}

// ---------------------------------------------------------------------------------------------
// `~` in CLAUDE_TOKEND_CONFIG_DIRS

#[test]
fn a_tilde_in_config_dirs_means_the_home_directory() {
    let home = TempHome::new();
    let (a, b) = (Login::fresh(), Login::fresh());
    for (dir, login) in [("a", &a), ("b", &b)] {
        std::fs::create_dir_all(home.path().join(dir)).unwrap();
        write_creds_at(
            &home.path().join(dir).join(".credentials.json"),
            &login.doc(),
        );
    }
    let server = TokenServer::start();
    // From an unrelated working directory: a literal `~` would be looked for there.
    let out = Cmd::new(&home)
        .server(&server)
        .env("CLAUDE_TOKEND_CONFIG_DIRS", "~/a:~/b/")
        .args(["status", "--json"])
        .run();
    out.expect_code(0);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON");
    let paths: Vec<&str> = v
        .as_array()
        .expect("two logins")
        .iter()
        .map(|l| l["path"].as_str().unwrap())
        .collect();
    let want_a = home.path().join("a/.credentials.json");
    let want_b = home.path().join("b/.credentials.json");
    out.check_eq(
        "the home's directories",
        paths,
        vec![want_a.to_str().unwrap(), want_b.to_str().unwrap()],
    );
    // `~` alone is the home itself.
    write_creds_at(&home.path().join(".credentials.json"), &a.doc());
    let out = Cmd::new(&home)
        .server(&server)
        .env("CLAUDE_TOKEND_CONFIG_DIRS", "~")
        .args(["status", "--json"])
        .run();
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON");
    out.check_eq(
        "~ alone",
        v["path"].as_str(),
        home.path().join(".credentials.json").to_str(),
    );
}

#[test]
fn a_tilde_that_cannot_be_expanded_is_a_usage_error_saying_why() {
    let (home, _login, server) = fresh_home();
    for (value, why) in [("~bob/claude", "~bob"), ("/srv/a:~other", "~other")] {
        let out = Cmd::new(&home)
            .server(&server)
            .env("CLAUDE_TOKEND_CONFIG_DIRS", value)
            .arg("--once")
            .run();
        out.expect_code(2)
            .expect_stderr_contains("CLAUDE_TOKEND_CONFIG_DIRS")
            .expect_stderr_contains(why)
            .check_eq("requests", server.count(), 0);
    }
    // `~/` with no HOME to put there.
    let out = Cmd::bare()
        .server(&server)
        .env("CLAUDE_TOKEND_CONFIG_DIRS", "~/claude")
        .arg("--once")
        .run();
    out.expect_code(2).expect_stderr_contains("HOME");
}

// ---------------------------------------------------------------------------------------------
// --notify desktop without notify-send

/// The daemon with `--notify desktop` and a PATH without `notify-send`: a warning at start, not
/// silence until the day a notice is lost. Waits for READY=1 on a notify socket, then stops it.
/// The warning names the setting as it was given (the variable, in a service's environment).
#[test]
fn notify_desktop_without_notify_send_warns_at_start() {
    for (with_program, by_env, warned) in [
        (false, false, true),
        (false, true, true),
        (true, false, false),
    ] {
        let (home, _login, server) = fresh_home();
        let bin = home.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        if with_program {
            let program = bin.join("notify-send");
            std::fs::write(&program, "#!/bin/sh\nexit 0\n").unwrap();
            let mut perms = std::fs::metadata(&program).unwrap().permissions();
            std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
            std::fs::set_permissions(&program, perms).unwrap();
        }
        let sock_path = home.path().join("notify.sock");
        let sock = UnixDatagram::bind(&sock_path).expect("bind NOTIFY_SOCKET");
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let cmd = Cmd::new(&home)
            .server(&server)
            .env("PATH", &bin)
            .env("NOTIFY_SOCKET", &sock_path);
        let d = if by_env {
            cmd.env("CLAUDE_TOKEND_NOTIFY", "desktop").spawn()
        } else {
            cmd.args(["--notify", "desktop"]).spawn()
        };
        let deadline = Instant::now() + SOON;
        let mut seen = String::new();
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline && !seen.contains("READY=1") {
            if let Ok(n) = sock.recv(&mut buf) {
                seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        }
        let out = stop(d);
        out.check(seen.contains("READY=1"), "the daemon got ready");
        out.check_eq(
            "warned that notify-send is missing",
            out.stderr.contains("notify-send"),
            warned,
        );
        if warned {
            let named = if by_env {
                "CLAUDE_TOKEND_NOTIFY=desktop"
            } else {
                "--notify desktop"
            };
            out.expect_stderr_contains(named);
        }
    }
}

/// With no credentials file at all, every command that needs one says how to make one: this
/// program's own `login` as well as Claude Code's, not only "sign in with Claude Code".
#[test]
fn a_missing_credentials_file_names_claude_tokend_login() {
    let home = TempHome::new();
    for args in [&["--once"][..], &["token"], &["refresh"], &["status"]] {
        let out = Cmd::new(&home).args(args).run();
        out.expect_code(78)
            .expect_stderr_contains("claude-tokend login")
            .expect_stderr_contains(".credentials.json");
    }
}
