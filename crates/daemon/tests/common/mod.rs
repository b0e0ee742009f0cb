//! The harness of the service and docs tests: the binary run as a process with a temp `HOME`
//! and `XDG_CONFIG_HOME`, and fake `systemctl`/`launchctl` on `PATH` that record their
//! arguments, so both service code paths (systemd and launchd) run on any Unix, as any user,
//! without touching the real session. `unit` reads a unit as systemd does.

// Each test binary (service, launchd, docs) includes this module and uses a different part of it.
#![allow(dead_code)]

mod unit;

#[allow(unused_imports)]
pub use unit::*;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_claude-tokend");
pub const UNIT: &str = "claude-tokend.service";
pub const LABEL: &str = "io.github.claude-tokend";
/// The longest one run of the binary may take before the test fails.
pub const RUN_LIMIT: Duration = Duration::from_secs(10);

/// One fake for both managers: it appends `<name> <args>` to `$FAKE_LOG`, fails (exit 1) when
/// an argument equals `$FAKE_FAIL`, hangs (a `sleep` child, its pid appended to
/// `$FAKE_LOG.hung`) when one equals `$FAKE_HANG`, and answers the status questions from
/// `$FAKE_RUNNING`.
/// With `$FAKE_NO_BUS` set, systemctl fails every call as it does where there is no user
/// session bus (su, sudo, ssh without lingering, containers): exit 1, systemd 254's message.
pub const FAKE: &str = r#"#!/bin/sh
name=${0##*/}
printf '%s\n' "$name $*" >> "$FAKE_LOG"
if [ "$name" = systemctl ] && [ -n "$FAKE_NO_BUS" ]; then
  echo 'Failed to connect to user scope bus via local transport: $DBUS_SESSION_BUS_ADDRESS and $XDG_RUNTIME_DIR not defined (consider using --machine=<user>@.host --user to connect to bus of other user)' >&2
  exit 1
fi
for a in "$@"; do
  if [ -n "$FAKE_HANG" ] && [ "$a" = "$FAKE_HANG" ]; then
    # Hung, as a manager waiting on a stuck bus is: a child that never ends holds our stderr.
    sleep 1000 &
    printf '%s\n' "$!" >> "$FAKE_LOG.hung"
    wait
    exit 0
  fi
  if [ -n "$FAKE_FAIL" ] && [ "$a" = "$FAKE_FAIL" ]; then
    echo "$name: simulated failure" >&2
    exit 1
  fi
done
if [ "$name" = launchctl ] && [ "$1" = print ]; then
  [ -n "$FAKE_RUNNING" ] && { echo "state = running"; exit 0; }
  echo "Could not find service" >&2; exit 113
fi
if [ "$name" = systemctl ] && [ "$2" = enable ]; then
  echo "Created symlink (fake) -> claude-tokend.service." >&2
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
pub fn fakes() -> &'static Path {
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
pub struct Env {
    pub root: PathBuf,
    vars: Vec<(String, String)>,
}

impl Env {
    pub fn new(manager: &str) -> Env {
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
        // No package's unit, whatever this machine has in /usr/lib/systemd/user (a .deb test
        // may install one meanwhile): with it, `service install` writes only a drop-in. The
        // tests of that case point this at a unit of their own.
        let no_package = env.root.join("no-package").display().to_string();
        env.set("CLAUDE_TOKEND_TEST_PACKAGED_UNIT_DIR", &no_package);
        env
    }

    pub fn set(&mut self, k: &str, v: &str) -> &mut Env {
        self.vars.retain(|(key, _)| key != k);
        self.vars.push((k.to_owned(), v.to_owned()));
        self
    }

    pub fn unset(&mut self, k: &str) -> &mut Env {
        self.vars.retain(|(key, _)| key != k);
        self
    }

    pub fn home(&self) -> PathBuf {
        self.root.join("home")
    }

    pub fn run(&self, args: &[&str]) -> Run {
        self.finish(Command::new(BIN), args)
    }

    /// Runs the binary as `program` (a link to it, say, or a bare name `PATH` finds), with
    /// `argv[0]` set to `arg0` when given (what a shell passes is the name it ran).
    pub fn run_as(&self, program: &Path, arg0: Option<&str>, args: &[&str]) -> Run {
        let mut cmd = Command::new(program);
        if let Some(a) = arg0 {
            cmd.arg0(a);
        }
        self.finish(cmd, args)
    }

    /// Runs the binary under umask `mask` (set by a shell that then execs it).
    pub fn run_umask(&self, mask: &str, args: &[&str]) -> Run {
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(format!("umask {mask} && exec \"$0\" \"$@\""))
            .arg(BIN);
        self.finish(cmd, args)
    }

    /// Runs the binary as user `uid` (and group `uid`): for a test that needs permissions to
    /// hold, run by root. The test's tree must be that user's (see [`chown_tree`]).
    pub fn run_as_uid(&self, uid: u32, args: &[&str]) -> Run {
        let mut cmd = Command::new(BIN);
        cmd.uid(uid).gid(uid);
        self.finish(cmd, args)
    }

    /// Runs `cmd args` in this environment, in a process group of its own, for at most
    /// [`RUN_LIMIT`]: past it the whole group is killed and the test fails (a hang is a
    /// failure here, not a test that never ends).
    fn finish(&self, cmd: Command, args: &[&str]) -> Run {
        self.start(cmd, args).finish()
    }

    /// Runs the binary with its stdout on a pipe nobody reads (`… | head -1` once `head` has
    /// gone): every write there fails with EPIPE.
    pub fn run_stdout_closed(&self, args: &[&str]) -> Run {
        let mut fds = [0; 2];
        // SAFETY: pipe(2) fills two descriptors, owned here from then on.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: both descriptors were just made and nothing else owns them.
        let (reader, writer) = unsafe {
            use std::os::fd::FromRawFd;
            (
                std::os::fd::OwnedFd::from_raw_fd(fds[0]),
                std::os::fd::OwnedFd::from_raw_fd(fds[1]),
            )
        };
        drop(reader);
        self.start_with(Command::new(BIN), args, Stdio::from(writer))
            .finish()
    }

    /// Runs the binary with `args` in the foreground of a terminal of its own (a pty) after
    /// `setup` (shell commands: `stty tostop`, say), through util-linux `script`, else
    /// Python's `pty`; stdout and stderr both come back in `out`. `None`, with the reason
    /// printed, where this machine has neither.
    pub fn run_in_terminal(&self, setup: &str, args: &[&str]) -> Option<Run> {
        let line = std::iter::once(BIN)
            .chain(args.iter().copied())
            .map(|a| format!("'{}'", a.replace('\'', r"'\''")))
            .collect::<Vec<String>>()
            .join(" ");
        let shell = format!("{setup}; exec {line}");
        let util_linux = Command::new("script")
            .arg("--version")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("util-linux"));
        let python = || {
            Command::new("python3")
                .args(["-c", "import pty"])
                .output()
                .is_ok_and(|o| o.status.success())
        };
        let cmd = if util_linux {
            let mut cmd = Command::new("script");
            cmd.args(["-qec", &shell, "/dev/null"]);
            cmd
        } else if python() {
            let mut cmd = Command::new("python3");
            cmd.args([
                "-c",
                "import os, pty, sys\n\
                 status = pty.spawn(['/bin/sh', '-c', sys.argv[1]])\n\
                 sys.exit(os.waitstatus_to_exitcode(status))",
                &shell,
            ]);
            cmd
        } else {
            eprintln!("skipped: neither util-linux `script` nor python3 to make a terminal with");
            return None;
        };
        Some(self.start_with(cmd, &[], Stdio::piped()).finish())
    }

    /// Makes the binary stop at `step` (a debug-build test seam) until the file this returns,
    /// which it creates there, is removed: see [`Running::paused`].
    pub fn pause_at(&mut self, step: &str) -> PathBuf {
        require_seams();
        let file = self.root.join("paused");
        let shown = file.display().to_string();
        self.set("CLAUDE_TOKEND_TEST_PAUSE_AT", step)
            .set("CLAUDE_TOKEND_TEST_PAUSE_FILE", &shown);
        file
    }

    /// Starts the binary with `args` in this environment (see [`Env::run`]) without waiting:
    /// for a test that signals it while it runs.
    /// SIGINT, SIGTERM and SIGHUP take their default action in it, as in a command run from a
    /// terminal, even where the tests run with them ignored (a background job, `nohup`).
    pub fn spawn(&self, args: &[&str]) -> Running {
        self.spawn_cmd(Command::new(BIN), args)
    }

    /// [`Env::spawn`] as user `uid` (see [`Env::run_as_uid`]).
    pub fn spawn_as_uid(&self, uid: u32, args: &[&str]) -> Running {
        let mut cmd = Command::new(BIN);
        cmd.uid(uid).gid(uid);
        self.spawn_cmd(cmd, args)
    }

    fn spawn_cmd(&self, mut cmd: Command, args: &[&str]) -> Running {
        // SAFETY: signal(2) is async-signal-safe, as a pre_exec hook must be.
        unsafe {
            cmd.pre_exec(|| {
                for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
                    libc::signal(s, libc::SIG_DFL);
                }
                Ok(())
            });
        }
        self.start(cmd, args)
    }

    fn start(&self, cmd: Command, args: &[&str]) -> Running {
        self.start_with(cmd, args, Stdio::piped())
    }

    fn start_with(&self, mut cmd: Command, args: &[&str], stdout: Stdio) -> Running {
        let started = Instant::now();
        let child = cmd
            .args(args)
            .env_clear()
            .envs(self.vars.iter().map(|(k, v)| (k, v)))
            .current_dir(&self.root)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("run claude-tokend");
        let pid = child.id();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        Running {
            pid,
            started,
            args: args.iter().map(|a| a.to_string()).collect(),
            done: rx,
        }
    }

    /// The recorded service-manager calls since the last `take_calls`, one per line.
    pub fn take_calls(&self) -> Vec<String> {
        let log = self.root.join("calls.log");
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let _ = std::fs::remove_file(&log);
        text.lines().map(str::to_owned).collect()
    }

    pub fn unit_path(&self) -> PathBuf {
        self.root.join("xdg/systemd/user").join(UNIT)
    }

    pub fn sandbox_path(&self) -> PathBuf {
        self.root
            .join("xdg/systemd/user")
            .join(format!("{UNIT}.d"))
            .join("sandbox.conf")
    }

    pub fn agent_path(&self) -> PathBuf {
        self.home()
            .join("Library/LaunchAgents")
            .join(format!("{LABEL}.plist"))
    }

    pub fn systemd() -> Env {
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

/// The binary running, started by [`Env::spawn`].
pub struct Running {
    pub pid: u32,
    started: Instant,
    args: Vec<String>,
    done: std::sync::mpsc::Receiver<std::io::Result<Output>>,
}

impl Running {
    /// Sends `signal` to the process (not its group: as a terminal's Ctrl-C reaches it while
    /// the calls it makes run in groups of their own).
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on the process this test started, which it has not reaped yet.
        unsafe { libc::kill(self.pid as i32, signal) };
    }

    /// Waits until it stands at the pause `file` names (see [`Env::pause_at`]), then runs
    /// `act` and lets it go on.
    #[track_caller]
    pub fn paused(&self, file: &Path, act: impl FnOnce()) {
        assert!(
            wait_until(Duration::from_secs(5), || file.exists()),
            "claude-tokend {:?} never reached its pause",
            self.args
        );
        act();
        std::fs::remove_file(file).unwrap();
    }

    /// Waits for it to end, for at most [`RUN_LIMIT`] from its start: past it its whole group
    /// is killed and the test fails.
    pub fn finish(self) -> Run {
        let left = RUN_LIMIT.saturating_sub(self.started.elapsed());
        match self.done.recv_timeout(left) {
            Ok(out) => {
                let mut run = Run::from(out.expect("wait for claude-tokend"));
                run.took = self.started.elapsed();
                run
            }
            Err(_) => {
                // SAFETY: kill(2) on the group made for this run.
                unsafe { libc::kill(-(self.pid as i32), libc::SIGKILL) };
                panic!(
                    "claude-tokend {:?} did not finish within {}s (killed)",
                    self.args,
                    RUN_LIMIT.as_secs()
                );
            }
        }
    }
}

/// Gives `root` and everything below it to user and group `uid` (links themselves, not what
/// they point at).
pub fn chown_tree(root: &Path, uid: u32) {
    std::os::unix::fs::lchown(root, Some(uid), Some(uid)).unwrap();
    if std::fs::symlink_metadata(root).unwrap().is_dir() {
        for entry in std::fs::read_dir(root).unwrap() {
            chown_tree(&entry.unwrap().path(), uid);
        }
    }
}

/// The effective uid of the tests (root, or a normal user).
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

pub struct Run {
    pub code: i32,
    pub out: String,
    pub err: String,
    /// How long the run took.
    pub took: Duration,
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            out: String::from_utf8_lossy(&o.stdout).into_owned(),
            err: String::from_utf8_lossy(&o.stderr).into_owned(),
            took: Duration::ZERO,
        }
    }
}

impl Run {
    #[track_caller]
    pub fn ok(self) -> Run {
        assert_eq!(
            self.code, 0,
            "expected success\nstdout:\n{}\nstderr:\n{}",
            self.out, self.err
        );
        self
    }

    #[track_caller]
    pub fn code(self, want: i32) -> Run {
        assert_eq!(
            self.code, want,
            "expected exit {want}\nstdout:\n{}\nstderr:\n{}",
            self.out, self.err
        );
        self
    }
}

/// The binary as the tests run it, which is what the service runs: the path it was run by
/// (`BIN` is absolute), as long as that leads to the running program.
pub fn program() -> String {
    BIN.to_owned()
}

/// The binary with every link resolved, as `current_exe` reports it.
pub fn resolved_program() -> String {
    std::fs::canonicalize(BIN).unwrap().display().to_string()
}

/// Fails the test, saying why, when the binary was built without the test seams (a
/// `cargo test -p claude-tokend` build): the tests that use one need `cargo test --workspace`
/// (or `cargo build --workspace` first), where the e2e crate turns them on.
pub fn require_seams() {
    static ON: OnceLock<bool> = OnceLock::new();
    let on = *ON.get_or_init(|| {
        Command::new("grep")
            .args(["-aqF", "CLAUDE_TOKEND_TEST_SERVICE_CALL_MS", BIN])
            .status()
            .is_ok_and(|s| s.success())
    });
    assert!(
        on,
        "{BIN} has no test seams: build it with `cargo build --workspace` (or run \
         `cargo test --workspace`), not `-p claude-tokend` alone"
    );
}

/// The mode bits of `path` (links not followed).
pub fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .mode()
        & 0o7777
}

/// Polls `cond` until it holds or `limit` passes; whether it held.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether process `pid` is gone (or a zombie nobody has reaped yet: it runs no more).
pub fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
        // No /proc (macOS): kill -0 says whether it exists.
        Err(_) if !Path::new("/proc/self").exists() => !Command::new("kill")
            .args(["-0", &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success()),
        Err(_) => true,
    }
}

/// Our uid, as the fake sees it in `gui/<uid>`, without unsafe code: a new file's owner.
pub fn uid(env: &Env) -> u32 {
    std::fs::metadata(env.home()).unwrap().uid()
}

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn has_line(text: &str, line: &str) -> bool {
    text.lines().any(|l| l == line)
}
