//! The machine's checks: `shadowing` (a variable that makes Claude Code ignore the stored
//! login: CLAUDE_CODE_OAUTH_TOKEN fails, ANTHROPIC_API_KEY and ANTHROPIC_AUTH_TOKEN warn; their
//! values are never printed) and `claude-code-store` (the login Claude Code in this shell reads,
//! against the logins the service keeps; on macOS, one login both in the Keychain and in a
//! file).

use std::fs;
use std::path::Path;

use claude_tokend_e2e::keychain::*;
use claude_tokend_e2e::*;

use super::support::*;

#[test]
fn claude_code_oauth_token_fails_and_api_keys_warn_without_their_values_shown() {
    let home = TempHome::new();
    home.write_creds(&Login::fresh().doc());
    let run = |var: Option<(&str, &str)>| {
        let mut cmd = doctor(&home, &["--json", "--offline"]);
        if let Some((k, v)) = var {
            cmd = cmd.env(k, v);
        }
        Report::run(cmd)
    };
    let r = run(None);
    r.out.expect_code(0);
    r.expect("shadowing", "ok", "none of CLAUDE_CODE_OAUTH_TOKEN");
    // Empty is unset, as Claude Code (Node) reads it.
    run(Some(("CLAUDE_CODE_OAUTH_TOKEN", ""))).expect("shadowing", "ok", "");
    let value = format!("sk-ant-oat01-{}", random_alnum(40));
    let r = run(Some(("CLAUDE_CODE_OAUTH_TOKEN", &value)));
    r.out.expect_code(1);
    r.expect("shadowing", "fail", "CLAUDE_CODE_OAUTH_TOKEN is set");
    r.out.check(
        r.fix("shadowing").contains("unset CLAUDE_CODE_OAUTH_TOKEN"),
        "fix says unset",
    );
    r.out
        .expect_no_secret(std::slice::from_ref(&value))
        .expect_masked(&value);
    for name in ["ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN"] {
        let value = format!("sk-ant-api03-{}", random_alnum(40));
        let r = run(Some((name, &value)));
        r.out.expect_code(0);
        r.expect("shadowing", "warn", &format!("{name} is set"));
        r.out.expect_no_secret(std::slice::from_ref(&value));
        let text = doctor(&home, &["--offline"]).env(name, &value).run();
        text.expect_no_secret(std::slice::from_ref(&value));
        text.check(
            text.stdout
                .lines()
                .any(|l| l.starts_with("warn  shadowing: ")),
            "the text line says warn",
        );
    }
}

/// A fake `systemctl show` answer for a loaded, running unit with these lines added.
fn show_running(home: &TempHome, extra: &str) -> std::path::PathBuf {
    let file = home.path().join("show.txt");
    fs::write(
        &file,
        format!(
            "LoadState=loaded\nUnitFileState=enabled\nActiveState=active\nSubState=running\n\
             MainPID=4242\n{extra}"
        ),
    )
    .unwrap();
    file
}

fn exec_start(args: &str) -> String {
    format!(
        "ExecStart={{ path=/usr/bin/claude-tokend ; argv[]=/usr/bin/claude-tokend {args} ; \
         ignore_errors=no ; start_time=[n/a] ; stop_time=[n/a] ; pid=0 ; code=(null) ; \
         status=0/0 }}\n"
    )
}

#[test]
fn a_service_keeping_another_config_dir_than_claude_codes_fails() {
    let home = TempHome::new();
    home.write_creds(&Login::fresh().doc());
    let other = home.path().join("other");
    write_creds_at(&other.join(".credentials.json"), &Login::fresh().doc());
    // The service keeps CLAUDE_CONFIG_DIR=other; this shell's Claude Code reads ~/.claude.
    let show = show_running(
        &home,
        &format!(
            "{}Environment=CLAUDE_CONFIG_DIR={}\n",
            exec_start(""),
            other.display()
        ),
    );
    let r = Report::run(doctor(&home, &["--json", "--offline"]).env("FAKE_SHOW", &show));
    r.out.expect_code(1);
    let c = r.expect("claude-code-store", "fail", &other.display().to_string());
    r.out.check(
        c["detail"]
            .as_str()
            .unwrap()
            .contains(&home.claude_dir().display().to_string()),
        "it names the directory Claude Code reads",
    );
    r.out.check(
        r.fix("claude-code-store").contains(&format!(
            "service install --now --config-dir {} --config-dir {}",
            other.display(),
            home.claude_dir().display()
        )),
        "the fix names the command, keeping the service's own login",
    );
    // Claude Code run with CLAUDE_CONFIG_DIR=other reads what the service keeps.
    let r = Report::run(
        doctor(&home, &["--json", "--offline"])
            .env("FAKE_SHOW", &show)
            .env("CLAUDE_CONFIG_DIR", &other),
    );
    r.expect("claude-code-store", "ok", "from CLAUDE_CONFIG_DIR");
    // A service naming ~/.claude by flag (through a symlinked path) keeps the default login.
    let link = home.path().join("link");
    std::os::unix::fs::symlink(home.claude_dir(), &link).unwrap();
    let show = show_running(
        &home,
        &format!(
            "{}Environment=\n",
            exec_start(&format!(
                "--config-dir {} --config-dir {}",
                other.display(),
                link.display()
            ))
        ),
    );
    let r = Report::run(doctor(&home, &["--json", "--offline"]).env("FAKE_SHOW", &show));
    r.expect(
        "claude-code-store",
        "ok",
        "which the systemd user service claude-tokend.service keeps",
    );
    // No service at all: nothing to compare with.
    let r = Report::run(doctor(&home, &["--json", "--offline"]));
    r.expect(
        "claude-code-store",
        "ok",
        &home.claude_dir().display().to_string(),
    );
}

#[test]
fn on_macos_a_login_both_in_the_keychain_and_in_a_file_is_a_warning() {
    let home = TempHome::new();
    let kc = FakeKeychain::new(&home);
    let cmd = |home: &TempHome| {
        kc.apply(doctor(home, &["--json", "--offline"]))
            .env("PATH", fake_path(&[kc.bin_dir()]))
            // `--store auto` and the check decide as they do on macOS (a debug-only seam).
            .env("CLAUDE_TOKEND_TEST_AUTO_AS_MACOS", "1")
    };
    kc.put(SERVICE, TEST_USER, &Login::fresh().doc());
    let r = Report::run(cmd(&home));
    r.expect("claude-code-store", "ok", "");
    r.expect("store", "ok", SERVICE);
    home.write_creds(&Login::fresh().doc());
    let r = Report::run(cmd(&home));
    r.out.expect_code(0);
    let c = r.expect("claude-code-store", "warn", "both in the Keychain");
    r.out.check(
        c["detail"]
            .as_str()
            .unwrap()
            .contains(&home.creds_path().display().to_string()),
        "it names the file",
    );
    r.out.check(
        r.fix("claude-code-store").contains("mv "),
        "it says to move the file away",
    );
    // Elsewhere than macOS the Keychain is not Claude Code's, and is not asked.
    kc.clear_log();
    let r = Report::run(
        kc.apply(doctor(&home, &["--json", "--offline"]))
            .env("PATH", fake_path(&[kc.bin_dir()])),
    );
    r.expect("claude-code-store", "ok", "");
    check_eq("security runs off macOS", kc.invocations(), 0);
    assert!(Path::new(kc.db_path()).exists());
}

/// A daemon started by hand keeps `~/.claude`, while Claude Code in this shell reads another
/// config directory: found without any service installed (the review's case).
#[test]
fn a_hand_started_daemon_keeping_the_default_while_this_shell_reads_another_fails() {
    let home = TempHome::new();
    home.write_creds(&Login::fresh().doc());
    let elsewhere = home.path().join("else");
    write_creds_at(&elsewhere.join(".credentials.json"), &Login::fresh().doc());
    let d = Cmd::new(&home).spawn();
    let pid = d.id();
    assert!(wait_until(std::time::Duration::from_secs(5), || {
        std::fs::read_to_string(home.claude_dir().join(".credentials.json.lock"))
            .is_ok_and(|t| t.contains(&format!("keeper {pid} ")))
    }));
    let r =
        Report::run(doctor(&home, &["--json", "--offline"]).env("CLAUDE_CONFIG_DIR", &elsewhere));
    stop(d);
    r.out.expect_code(1);
    r.expect("claude-code-store", "fail", &format!("pid {pid}"));
    // From a shell without CLAUDE_CONFIG_DIR, the same daemon keeps what Claude Code reads.
    let r = Report::run(doctor(&home, &["--json", "--offline"]));
    r.expect("claude-code-store", "ok", "reads the login of");
}

/// On macOS the login is a Keychain item named from `CLAUDE_CONFIG_DIR` as written: the
/// service's `…/alt` and this shell's `…/alt/` are one directory but two items (the review's
/// case), which claude-code-store must not call the same login.
#[test]
fn on_macos_the_same_directory_written_otherwise_is_another_keychain_item() {
    let home = TempHome::new();
    let kc = FakeKeychain::new(&home);
    let alt = home.path().join("alt");
    fs::create_dir_all(&alt).unwrap();
    let show = show_running(
        &home,
        &format!(
            "{}Environment=CLAUDE_CONFIG_DIR={}\n",
            exec_start(""),
            alt.display()
        ),
    );
    let run = |shell_dir: String| {
        Report::run(
            kc.apply(doctor(&home, &["--json", "--offline"]))
                .env("PATH", fake_path(&[kc.bin_dir()]))
                .env("CLAUDE_TOKEND_TEST_AUTO_AS_MACOS", "1")
                .env("FAKE_SHOW", &show)
                .env("CLAUDE_CONFIG_DIR", shell_dir),
        )
    };
    let r = run(format!("{}/", alt.display()));
    r.expect("claude-code-store", "fail", "Keychain item");
    let r = run(alt.display().to_string());
    r.expect(
        "claude-code-store",
        "ok",
        "which the systemd user service claude-tokend.service keeps",
    );
}

/// `systemctl show` prints an Environment entry holding a space as `[unprintable]` (and joins
/// ExecStart's arguments with plain spaces): the logins of a service whose paths have a space
/// are read from its unit file instead (the second review's case).
#[test]
fn a_service_login_with_a_space_in_its_path_is_read_from_the_unit_file() {
    let home = TempHome::new();
    home.write_creds(&Login::fresh().doc());
    let spaced = home.path().join("My Claude");
    write_creds_at(&spaced.join(".credentials.json"), &Login::fresh().doc());
    let units = home.path().join(".config/systemd/user");
    fs::create_dir_all(&units).unwrap();
    fs::write(
        units.join("claude-tokend.service"),
        format!(
            "[Service]\nExecStart=/usr/bin/claude-tokend\nEnvironment=\"CLAUDE_TOKEND_CONFIG_DIRS={}\"\n",
            spaced.display()
        ),
    )
    .unwrap();
    let show = show_running(
        &home,
        &format!("{}Environment=[unprintable]\n", exec_start("")),
    );
    let r = Report::run(
        doctor(&home, &["--json", "--offline"])
            .env("FAKE_SHOW", &show)
            .env("CLAUDE_CONFIG_DIR", &spaced),
    );
    r.expect(
        "claude-code-store",
        "ok",
        "which the systemd user service claude-tokend.service keeps",
    );
    // The default login is not the one the service keeps.
    let r = Report::run(doctor(&home, &["--json", "--offline"]).env("FAKE_SHOW", &show));
    r.expect("claude-code-store", "fail", "My Claude");
}
