//! `claude-tokend service install|uninstall|status` on the launchd code path, against the fake
//! `launchctl` of `common`; the agent it writes is read back with the `plist` crate.

use std::path::Path;

mod common;

use common::*;

// ---------------------------------------------------------------------------------------------
// launchd

fn plist_at(path: &Path) -> plist::Dictionary {
    plist::Value::from_file(path)
        .unwrap_or_else(|e| panic!("{}: not a plist: {e}", path.display()))
        .into_dictionary()
        .expect("a dict at the top")
}

#[test]
fn launchd_install_writes_a_valid_agent_and_bootstraps_it() {
    let env = Env::new("launchd");
    let run = env
        .run(&["service", "install", "--now", "--credentials", "c.json"])
        .ok();
    let home = env.home().display().to_string();
    let d = plist_at(&env.agent_path());

    assert_eq!(d["Label"].as_string(), Some(LABEL));
    let args = d["ProgramArguments"].as_array().expect("an array");
    let exec = args[0].as_string().expect("a string");
    assert!(Path::new(exec).is_absolute());
    assert_eq!(exec, program());
    assert_eq!(d["RunAtLoad"].as_boolean(), Some(true));
    let keep = d["KeepAlive"].as_dictionary().expect("a dict");
    assert_eq!(keep["SuccessfulExit"].as_boolean(), Some(false));
    assert_eq!(d["ProcessType"].as_string(), Some("Background"));
    assert!(d["ThrottleInterval"].as_unsigned_integer().is_some());
    let log = format!("{home}/Library/Logs/claude-tokend.log");
    assert_eq!(d["StandardOutPath"].as_string(), Some(log.as_str()));
    assert_eq!(d["StandardErrorPath"].as_string(), Some(log.as_str()));
    let vars = d["EnvironmentVariables"].as_dictionary().expect("a dict");
    assert_eq!(vars["HOME"].as_string(), Some(home.as_str()));
    let creds = env.root.join("c.json").display().to_string();
    assert_eq!(
        vars["CLAUDE_TOKEND_CREDENTIALS"].as_string(),
        Some(creds.as_str())
    );
    assert!(
        env.home().join("Library/Logs").is_dir(),
        "launchd does not create the log directory"
    );

    let uid = uid(&env);
    assert_eq!(
        env.take_calls(),
        [
            format!("launchctl print gui/{uid}/{LABEL}"),
            format!(
                "launchctl bootstrap gui/{uid} {}",
                env.agent_path().display()
            ),
        ]
    );
    assert!(
        run.out.contains(&format!("tail -f {log}")),
        "says where the logs are:\n{}",
        run.out
    );
}

#[test]
fn launchd_reinstall_of_a_loaded_agent_reloads_only_after_a_change() {
    let mut env = Env::new("launchd");
    env.run(&["service", "install"]).ok();
    assert!(env.take_calls().is_empty(), "no --now: no launchctl calls");
    env.set("FAKE_RUNNING", "1");
    let uid = uid(&env);

    env.run(&["service", "install", "--now"]).ok();
    assert_eq!(
        env.take_calls(),
        [
            format!("launchctl print gui/{uid}/{LABEL}"),
            format!("launchctl kickstart gui/{uid}/{LABEL}"),
        ]
    );

    env.run(&["service", "install", "--now", "--refresh-before", "1h"])
        .ok();
    assert_eq!(
        env.take_calls(),
        [
            format!("launchctl print gui/{uid}/{LABEL}"),
            format!("launchctl bootout gui/{uid}/{LABEL}"),
            format!(
                "launchctl bootstrap gui/{uid} {}",
                env.agent_path().display()
            ),
        ]
    );
    let d = plist_at(&env.agent_path());
    let vars = d["EnvironmentVariables"].as_dictionary().unwrap();
    assert_eq!(vars["CLAUDE_TOKEND_REFRESH_BEFORE"].as_string(), Some("1h"));
}

#[test]
fn launchd_uninstall_boots_out_and_removes_the_agent() {
    let mut env = Env::new("launchd");
    env.run(&["service", "install"]).ok();
    env.set("FAKE_RUNNING", "1").set("FAKE_FAIL", "bootout");
    let run = env.run(&["service", "uninstall"]).code(1);
    assert!(run.err.contains("launchctl bootout"), "{}", run.err);
    assert!(env.agent_path().is_file(), "kept when bootout fails");
    env.take_calls();

    env.unset("FAKE_FAIL");
    env.run(&["service", "uninstall"]).ok();
    let uid = uid(&env);
    assert_eq!(
        env.take_calls(),
        [
            format!("launchctl print gui/{uid}/{LABEL}"),
            format!("launchctl bootout gui/{uid}/{LABEL}"),
        ]
    );
    assert!(!env.agent_path().exists());

    env.unset("FAKE_RUNNING");
    let run = env.run(&["service", "uninstall"]).ok();
    assert!(run.out.contains("Nothing to remove"), "{}", run.out);
}

#[test]
fn launchd_status_says_when_it_cannot_ask_launchd() {
    let mut env = Env::new("launchd");
    env.run(&["service", "install"]).ok();
    let empty = env.root.join("empty-bin");
    std::fs::create_dir_all(&empty).unwrap();
    env.set("PATH", &empty.display().to_string());
    let run = env.run(&["service", "status"]).code(69);
    assert!(run.err.contains("could not ask launchd"), "{}", run.err);
    assert!(!run.err.contains("not loaded ("), "{}", run.err);
}

#[test]
fn launchd_status_asks_launchctl() {
    let mut env = Env::new("launchd");
    env.run(&["service", "status"]).code(1);
    env.run(&["service", "install"]).ok();
    env.run(&["service", "status"]).code(1);
    env.set("FAKE_RUNNING", "1");
    let run = env.run(&["service", "status"]).ok();
    assert!(run.out.contains("state = running"), "{}", run.out);
    let uid = uid(&env);
    assert_eq!(
        env.take_calls(),
        [
            format!("launchctl print gui/{uid}/{LABEL}"),
            format!("launchctl print gui/{uid}/{LABEL}"),
        ]
    );
}

#[test]
fn launchd_install_puts_several_logins_in_program_arguments() {
    let env = Env::new("launchd");
    env.run(&[
        "service",
        "install",
        "--credentials",
        "/srv/a & b.json",
        "--config-dir",
        "/srv/c",
    ])
    .ok();
    let d = plist_at(&env.agent_path());
    let args: Vec<&str> = d["ProgramArguments"]
        .as_array()
        .expect("an array")
        .iter()
        .map(|v| v.as_string().expect("a string"))
        .collect();
    let program = program();
    assert_eq!(
        args,
        [
            program.as_str(),
            "--credentials",
            "/srv/a & b.json",
            "--config-dir",
            "/srv/c"
        ]
    );
}

#[test]
fn launchd_uninstall_without_launchctl_removes_the_agent_with_a_warning() {
    let mut env = Env::new("launchd");
    env.run(&["service", "install"]).ok();
    assert!(env.agent_path().is_file());
    let empty = env.root.join("empty-bin");
    std::fs::create_dir_all(&empty).unwrap();
    env.set("PATH", &empty.display().to_string());
    let run = env.run(&["service", "uninstall"]).ok();
    assert!(!env.agent_path().exists(), "{}{}", run.out, run.err);
    assert!(run.err.contains("warning"), "{}", run.err);
    assert!(run.err.contains("launchctl"), "{}", run.err);
    let run = env.run(&["service", "uninstall"]).ok();
    assert!(run.out.contains("Nothing to remove"), "{}", run.out);
}

/// `"`, `\`, `$` and `%` are plain text in a plist: the notify command reads back exactly,
/// through a strict XML parse and a plist reader.
#[test]
fn launchd_carries_a_notify_command_with_quotes_exactly() {
    let env = Env::new("launchd");
    let cmd = "notify-send \"Claude login\" \"$CLAUDE_TOKEND_MESSAGE\" # \\ 50% <&> \t'";
    env.run(&["service", "install", "--notify-cmd", cmd]).ok();
    let text = read(&env.agent_path());
    let options = roxmltree::ParsingOptions {
        allow_dtd: true,
        ..roxmltree::ParsingOptions::default()
    };
    roxmltree::Document::parse_with_options(&text, options).expect("well-formed XML");
    let d = plist_at(&env.agent_path());
    let vars = d["EnvironmentVariables"].as_dictionary().unwrap();
    assert_eq!(vars["CLAUDE_TOKEND_NOTIFY_CMD"].as_string(), Some(cmd));
}
