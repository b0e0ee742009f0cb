//! `claude-tokend service install|uninstall|status`, `completions` and `man`, run as processes.
//! The service managers are fakes on `PATH` that record their arguments, and `HOME` and
//! `XDG_CONFIG_HOME` are temp directories, so both code paths (systemd and launchd) run on any
//! Unix, as any user, without touching the real session.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

const BIN: &str = env!("CARGO_BIN_EXE_claude-tokend");
const UNIT: &str = "claude-tokend.service";
const LABEL: &str = "io.github.claude-tokend";

/// One fake for both managers: it appends `<name> <args>` to `$FAKE_LOG`, fails (exit 1) when
/// an argument equals `$FAKE_FAIL`, and answers the status questions from `$FAKE_RUNNING`.
const FAKE: &str = r#"#!/bin/sh
name=${0##*/}
printf '%s\n' "$name $*" >> "$FAKE_LOG"
for a in "$@"; do
  if [ -n "$FAKE_FAIL" ] && [ "$a" = "$FAKE_FAIL" ]; then
    echo "$name: simulated failure" >&2
    exit 1
  fi
done
if [ "$name" = launchctl ] && [ "$1" = print ]; then
  [ -n "$FAKE_RUNNING" ] && { echo "state = running"; exit 0; }
  echo "Could not find service" >&2; exit 113
fi
if [ "$name" = systemctl ] && [ "$2" = status ]; then
  [ -n "$FAKE_RUNNING" ] && { echo "Active: active (running)"; exit 0; }
  echo "Active: inactive (dead)"; exit 3
fi
exit 0
"#;

/// The directory holding the fakes, written once before any test spawns a process (writing an
/// executable while another thread forks can leave it "text file busy" for the exec), through
/// a rename, so a concurrent test run never sees a half-written or busy file either.
fn fakes() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("service-fakes");
        std::fs::create_dir_all(&dir).unwrap();
        for name in ["systemctl", "launchctl"] {
            let tmp = dir.join(format!(".{name}.{}", std::process::id()));
            std::fs::write(&tmp, FAKE).unwrap();
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
            std::fs::rename(&tmp, dir.join(name)).unwrap();
        }
        dir
    })
}

/// A temp root with `home/`, the call log, and the environment of one test.
struct Env {
    root: PathBuf,
    vars: Vec<(String, String)>,
}

impl Env {
    fn new(manager: &str) -> Env {
        static N: AtomicUsize = AtomicUsize::new(0);
        let fakes = fakes();
        let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "service-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("home")).unwrap();
        let mut env = Env {
            root,
            vars: Vec::new(),
        };
        let home = env.home().display().to_string();
        let log = env.root.join("calls.log").display().to_string();
        env.set("PATH", &format!("{}:/usr/bin:/bin", fakes.display()));
        env.set("HOME", &home);
        env.set("FAKE_LOG", &log);
        env.set("CLAUDE_TOKEND_SERVICE_MANAGER", manager);
        env
    }

    fn set(&mut self, k: &str, v: &str) -> &mut Env {
        self.vars.retain(|(key, _)| key != k);
        self.vars.push((k.to_owned(), v.to_owned()));
        self
    }

    fn unset(&mut self, k: &str) -> &mut Env {
        self.vars.retain(|(key, _)| key != k);
        self
    }

    fn home(&self) -> PathBuf {
        self.root.join("home")
    }

    fn run(&self, args: &[&str]) -> Run {
        let out = Command::new(BIN)
            .args(args)
            .env_clear()
            .envs(self.vars.iter().map(|(k, v)| (k, v)))
            .current_dir(&self.root)
            .output()
            .expect("run claude-tokend");
        Run::from(out)
    }

    /// The recorded service-manager calls since the last `take_calls`, one per line.
    fn take_calls(&self) -> Vec<String> {
        let log = self.root.join("calls.log");
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let _ = std::fs::remove_file(&log);
        text.lines().map(str::to_owned).collect()
    }

    fn unit_path(&self) -> PathBuf {
        self.root.join("xdg/systemd/user").join(UNIT)
    }

    fn sandbox_path(&self) -> PathBuf {
        self.root
            .join("xdg/systemd/user")
            .join(format!("{UNIT}.d"))
            .join("sandbox.conf")
    }

    fn agent_path(&self) -> PathBuf {
        self.home()
            .join("Library/LaunchAgents")
            .join(format!("{LABEL}.plist"))
    }

    fn systemd() -> Env {
        let mut env = Env::new("systemd");
        let xdg = env.root.join("xdg").display().to_string();
        env.set("XDG_CONFIG_HOME", &xdg);
        env
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

struct Run {
    code: i32,
    out: String,
    err: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            out: String::from_utf8_lossy(&o.stdout).into_owned(),
            err: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Run {
    #[track_caller]
    fn ok(self) -> Run {
        assert_eq!(
            self.code, 0,
            "expected success\nstdout:\n{}\nstderr:\n{}",
            self.out, self.err
        );
        self
    }

    #[track_caller]
    fn code(self, want: i32) -> Run {
        assert_eq!(
            self.code, want,
            "expected exit {want}\nstdout:\n{}\nstderr:\n{}",
            self.out, self.err
        );
        self
    }
}

/// The binary as `current_exe` reports it (links resolved).
fn program() -> String {
    std::fs::canonicalize(BIN).unwrap().display().to_string()
}

/// Our uid, as the fake sees it in `gui/<uid>`, without unsafe code: a new file's owner.
fn uid(env: &Env) -> u32 {
    std::fs::metadata(env.home()).unwrap().uid()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn has_line(text: &str, line: &str) -> bool {
    text.lines().any(|l| l == line)
}

// ---------------------------------------------------------------------------------------------
// systemd

#[test]
fn systemd_install_renders_the_unit_and_runs_nothing_without_now() {
    let mut env = Env::systemd();
    let config = env.root.join("state/claude").display().to_string();
    env.set("CLAUDE_CONFIG_DIR", &config);
    // A relative --credentials is made absolute: the service does not run in this directory.
    let run = env
        .run(&["service", "install", "--credentials", "my creds/c.json"])
        .ok();
    let unit = read(&env.unit_path());
    let exec = program();
    assert!(
        has_line(&unit, &format!("ExecStart={exec}"))
            || has_line(&unit, &format!("ExecStart=\"{exec}\"")),
        "ExecStart is not {exec}:\n{unit}"
    );
    let creds = env.root.join("my creds/c.json").display().to_string();
    assert!(
        has_line(
            &unit,
            &format!("Environment=\"CLAUDE_TOKEND_CREDENTIALS={creds}\"")
        ),
        "{unit}"
    );
    assert!(
        has_line(&unit, &format!("Environment=CLAUDE_CONFIG_DIR={config}")),
        "{unit}"
    );
    // Defaults are not pinned into the unit.
    assert!(!unit.contains("CLAUDE_TOKEND_TOKEN_URL"), "{unit}");
    for line in [
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
        "UMask=0077",
        "WantedBy=default.target",
    ] {
        assert!(has_line(&unit, line), "unit lacks {line}:\n{unit}");
    }
    assert!(!unit.contains("%h/.cargo"), "the placeholder path was left");
    assert!(env.take_calls().is_empty(), "no --now: no systemctl calls");
    assert!(!env.sandbox_path().exists(), "no --sandbox: no drop-in");
    assert!(
        run.out
            .contains(&format!("Wrote: {}", env.unit_path().display())),
        "{}",
        run.out
    );
    assert!(
        run.out
            .contains("systemctl --user enable --now claude-tokend.service"),
        "says how to start it:\n{}",
        run.out
    );
    assert!(
        run.out.contains("journalctl --user -u claude-tokend -f"),
        "{}",
        run.out
    );
    // Nothing under ~/.config when XDG_CONFIG_HOME says elsewhere.
    assert!(!env.home().join(".config").exists());
}

#[test]
fn systemd_install_honours_xdg_config_home_only_when_absolute() {
    for xdg in [None, Some("relative/config")] {
        let mut env = Env::new("systemd");
        match xdg {
            Some(v) => env.set("XDG_CONFIG_HOME", v),
            None => env.unset("XDG_CONFIG_HOME"),
        };
        env.run(&["service", "install"]).ok();
        let path = env.home().join(".config/systemd/user").join(UNIT);
        assert!(
            path.is_file(),
            "XDG_CONFIG_HOME={xdg:?}: no {}",
            path.display()
        );
        assert!(!env.root.join("relative").exists());
    }
}

#[test]
fn systemd_install_now_reloads_enables_and_restarts_only_after_a_change() {
    let env = Env::systemd();
    let run = env.run(&["service", "install", "--now"]).ok();
    assert_eq!(
        env.take_calls(),
        [
            "systemctl --user daemon-reload",
            "systemctl --user enable --now claude-tokend.service"
        ]
    );
    assert!(
        run.out
            .contains("Running: systemctl --user enable --now claude-tokend.service"),
        "each step is printed:\n{}",
        run.out
    );

    // The same again: nothing to write, nothing to restart.
    let run = env.run(&["service", "install", "--now"]).ok();
    assert!(run.out.contains("Unchanged:"), "{}", run.out);
    assert_eq!(
        env.take_calls(),
        [
            "systemctl --user daemon-reload",
            "systemctl --user enable --now claude-tokend.service"
        ]
    );

    // New settings replace our own unedited unit, show what changed, and restart the service.
    let run = env
        .run(&["service", "install", "--now", "--refresh-before", "20m"])
        .ok();
    assert!(run.out.contains("Replaced:"), "{}", run.out);
    assert!(
        run.out
            .contains("+ Environment=CLAUDE_TOKEND_REFRESH_BEFORE=20m"),
        "{}",
        run.out
    );
    assert!(has_line(
        &read(&env.unit_path()),
        "Environment=CLAUDE_TOKEND_REFRESH_BEFORE=20m"
    ));
    assert_eq!(
        env.take_calls(),
        [
            "systemctl --user daemon-reload",
            "systemctl --user enable --now claude-tokend.service",
            "systemctl --user try-restart claude-tokend.service"
        ]
    );

    // Adding the sandbox drop-in to a running service restarts it too.
    let run = env
        .run(&[
            "service",
            "install",
            "--now",
            "--refresh-before",
            "20m",
            "--sandbox",
        ])
        .ok();
    assert!(
        run.out.contains("Unchanged:") && run.out.contains("Wrote:"),
        "{}",
        run.out
    );
    assert_eq!(
        env.take_calls().last().map(String::as_str),
        Some("systemctl --user try-restart claude-tokend.service")
    );
}

#[test]
fn systemd_install_refuses_to_replace_a_hand_edited_unit_without_force() {
    let env = Env::systemd();
    env.run(&["service", "install"]).ok();
    let edited = read(&env.unit_path()) + "Nice=5\n";
    std::fs::write(env.unit_path(), &edited).unwrap();

    let run = env.run(&["service", "install", "--now"]).code(1);
    assert!(run.err.contains("edited by hand"), "{}", run.err);
    assert!(run.err.contains("--force"), "{}", run.err);
    assert!(run.err.contains("systemctl --user edit"), "{}", run.err);
    assert_eq!(read(&env.unit_path()), edited, "the edit is kept");
    assert!(env.take_calls().is_empty());

    // A file that was never ours is protected the same way.
    std::fs::write(env.unit_path(), "[Service]\nExecStart=/bin/true\n").unwrap();
    env.run(&["service", "install"]).code(1);

    env.run(&["service", "install", "--force"]).ok();
    let unit = read(&env.unit_path());
    assert!(!has_line(&unit, "Nice=5") && has_line(&unit, "Type=notify"));
}

#[test]
fn systemd_failure_names_the_command_and_exits_1() {
    let mut env = Env::systemd();
    env.set("FAKE_FAIL", "enable");
    let run = env.run(&["service", "install", "--now"]).code(1);
    assert!(
        run.err
            .contains("`systemctl --user enable --now claude-tokend.service` failed"),
        "{}",
        run.err
    );
    assert!(run.err.contains("by hand"), "{}", run.err);
    assert!(env.unit_path().is_file(), "the unit stays installed");

    // No systemctl at all.
    let empty = env.root.join("empty-bin");
    std::fs::create_dir_all(&empty).unwrap();
    env.unset("FAKE_FAIL")
        .set("PATH", &empty.display().to_string());
    let run = env.run(&["service", "install", "--now"]).code(1);
    assert!(run.err.contains("cannot run `systemctl`"), "{}", run.err);
}

#[test]
fn systemd_uninstall_reverses_install_and_keeps_the_users_drop_ins() {
    let env = Env::systemd();
    env.run(&["service", "install", "--sandbox"]).ok();
    let dropins = env.sandbox_path().parent().unwrap().to_path_buf();
    std::fs::write(dropins.join("override.conf"), "[Service]\nNice=5\n").unwrap();
    env.take_calls();

    let run = env.run(&["service", "uninstall"]).ok();
    assert_eq!(
        env.take_calls(),
        [
            "systemctl --user disable --now claude-tokend.service",
            "systemctl --user daemon-reload"
        ]
    );
    assert!(!env.unit_path().exists());
    assert!(!env.sandbox_path().exists());
    assert!(
        dropins.join("override.conf").is_file(),
        "the user's own drop-in stays"
    );
    assert!(run.out.contains("Removed:"), "{}", run.out);

    // Nothing left: nothing to do.
    let run = env.run(&["service", "uninstall"]).ok();
    assert!(run.out.contains("Nothing to remove"), "{}", run.out);
    assert!(env.take_calls().is_empty());
}

#[test]
fn systemd_uninstall_removes_nothing_when_stopping_fails() {
    let mut env = Env::systemd();
    env.run(&["service", "install"]).ok();
    env.set("FAKE_FAIL", "disable");
    let run = env.run(&["service", "uninstall"]).code(1);
    assert!(
        run.err
            .contains("`systemctl --user disable --now claude-tokend.service` failed"),
        "{}",
        run.err
    );
    assert!(env.unit_path().is_file());
}

#[test]
fn systemd_status_reports_installed_and_running() {
    let mut env = Env::systemd();
    let run = env.run(&["service", "status"]).code(1);
    assert!(run.out.contains("not installed"), "{}", run.out);
    assert!(env.take_calls().is_empty());

    env.run(&["service", "install"]).ok();
    env.take_calls();
    let run = env.run(&["service", "status"]).code(1);
    assert!(run.err.contains("not running"), "{}", run.err);
    env.set("FAKE_RUNNING", "1");
    let run = env.run(&["service", "status"]).ok();
    assert!(run.out.contains("Active: active (running)"), "{}", run.out);
    assert!(
        run.out.contains("journalctl --user -u claude-tokend -f"),
        "{}",
        run.out
    );
    assert_eq!(
        env.take_calls(),
        [
            "systemctl --user status --no-pager claude-tokend.service",
            "systemctl --user status --no-pager claude-tokend.service"
        ]
    );
}

#[test]
fn sandbox_drop_in_opens_exactly_the_directories_the_daemon_writes() {
    // CLAUDE_CONFIG_DIR: the config dir and its parent (Claude Code's `<config dir>.lock`).
    let mut env = Env::systemd();
    let state = env.root.join("state");
    env.set(
        "CLAUDE_CONFIG_DIR",
        &state.join("claude").display().to_string(),
    );
    env.run(&["service", "install", "--sandbox"]).ok();
    let dropin = read(&env.sandbox_path());
    assert!(
        has_line(&dropin, &format!("ReadWritePaths=-{}", state.display())),
        "{dropin}"
    );
    for line in [
        "ProtectSystem=strict",
        "ProtectHome=read-only",
        "PrivateTmp=yes",
    ] {
        assert!(has_line(&dropin, line), "{dropin}");
    }

    // A symlinked credentials file: its target's directory too.
    let mut env = Env::systemd();
    let elsewhere = env.root.join("vault");
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::create_dir_all(env.home().join(".claude")).unwrap();
    std::os::unix::fs::symlink(
        elsewhere.join("creds.json"),
        env.home().join(".claude/.credentials.json"),
    )
    .unwrap();
    env.unset("CLAUDE_CONFIG_DIR");
    env.run(&["service", "install", "--sandbox"]).ok();
    let dropin = read(&env.sandbox_path());
    assert!(
        has_line(
            &dropin,
            &format!(
                "ReadWritePaths=-{} -{}",
                env.home().display(),
                elsewhere.display()
            )
        ),
        "{dropin}"
    );
}

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

// ---------------------------------------------------------------------------------------------
// bad usage

#[test]
fn bad_service_command_lines_exit_2() {
    let mut env = Env::systemd();
    env.run(&["service"]).code(2);
    env.run(&["service", "install", "--no-such-flag"]).code(2);
    env.run(&["service", "install", "--credentials", "a\nb"])
        .code(2);
    env.set("CLAUDE_TOKEND_SERVICE_MANAGER", "upstart");
    env.run(&["service", "install"]).code(2);
    env.set("CLAUDE_TOKEND_SERVICE_MANAGER", "launchd");
    let run = env.run(&["service", "install", "--sandbox"]).code(2);
    assert!(run.err.contains("--sandbox"), "{}", run.err);
    env.unset("HOME");
    let run = env.run(&["service", "install"]).code(2);
    assert!(run.err.contains("HOME"), "{}", run.err);
    assert!(env.take_calls().is_empty());
    assert!(!env.unit_path().exists() && !env.agent_path().exists());
}

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
