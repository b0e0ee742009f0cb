//! Running the binary under test: [`bin`] finds it, [`Cmd`] starts it with a clean environment
//! and a timeout, [`Running`] is a started run, and [`Out`] holds what a run left (exit code,
//! output) and asserts on it, printing both on failure. Also the signal and liveness helpers
//! ([`stop`], [`send_signal`], [`is_running`], [`wait_until`]). Uses the home and the server;
//! neither uses it.

use std::ffi::OsStr;
use std::fmt::{Debug, Display};
use std::fs;
use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::home::{FileState, TempHome, list_names};
use crate::server::TokenServer;

// ---------------------------------------------------------------------------------------------
// The binary

/// The `claude-tokend` binary under test: `$CLAUDE_TOKEND_BIN` when set, else the one cargo
/// built next to this test executable (tests live in `target/<profile>/deps/`).
pub fn bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CLAUDE_TOKEND_BIN") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "CLAUDE_TOKEND_BIN={} is not a file",
            p.display()
        );
        return p;
    }
    let exe = std::env::current_exe().expect("the test executable's own path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test executable lives in target/<profile>/deps/");
    let p = dir.join("claude-tokend");
    assert!(
        p.is_file(),
        "the claude-tokend binary is not at {}: build it with `cargo build -p claude-tokend` \
         or run `cargo test --workspace` (or point CLAUDE_TOKEND_BIN at it)",
        p.display()
    );
    p
}

/// The default User-Agent the binary sends: the workspace shares one version.
pub fn default_user_agent() -> String {
    format!("claude-tokend/{}", env!("CARGO_PKG_VERSION"))
}

/// The contract's default client id.
pub const DEFAULT_CLIENT_ID: &str = "9d1c250a-e61b-44d9-88ed-5944d1962f5e";

// ---------------------------------------------------------------------------------------------
// Running it

/// How long any one run may take before it is killed and the test fails. Longer than the
/// default retry budget (60 s), so a run that retries by mistake ends on its own first.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(90);

/// The binary with a clean environment: only PATH, HOME and what the test adds.
pub struct Cmd {
    command: Command,
    shown: Vec<String>,
    timeout: Duration,
}

impl Cmd {
    /// The binary with HOME set to `home`.
    pub fn new(home: &TempHome) -> Cmd {
        Cmd::bare().env("HOME", home.path())
    }

    /// The binary with no HOME at all (only PATH).
    pub fn bare() -> Cmd {
        let mut command = Command::new(bin());
        command.env_clear();
        if let Some(path) = std::env::var_os("PATH") {
            command.env("PATH", path);
        }
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        Cmd {
            command,
            shown: vec!["claude-tokend".into()],
            timeout: RUN_TIMEOUT,
        }
    }

    /// Points `CLAUDE_TOKEND_TOKEN_URL` at the server.
    pub fn server(self, server: &TokenServer) -> Cmd {
        self.env("CLAUDE_TOKEND_TOKEN_URL", server.url())
    }

    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Cmd {
        self.shown.push(a.as_ref().to_string_lossy().into_owned());
        self.command.arg(a);
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(mut self, args: I) -> Cmd {
        for a in args {
            self = self.arg(a);
        }
        self
    }

    pub fn env(mut self, k: impl AsRef<OsStr>, v: impl AsRef<OsStr>) -> Cmd {
        self.shown.insert(
            0,
            format!(
                "{}={}",
                k.as_ref().to_string_lossy(),
                v.as_ref().to_string_lossy()
            ),
        );
        self.command.env(k, v);
        self
    }

    pub fn env_remove(mut self, k: impl AsRef<OsStr>) -> Cmd {
        let name = k.as_ref().to_string_lossy().into_owned();
        self.shown.retain(|s| !s.starts_with(&format!("{name}=")));
        self.command.env_remove(k);
        self
    }

    /// Runs the binary in `dir` (relative paths on its command line are taken from there).
    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Cmd {
        self.shown
            .insert(0, format!("(cd {})", dir.as_ref().display()));
        self.command.current_dir(dir);
        self
    }

    /// Runs the binary under this umask (as a shell's `umask` would set it).
    pub fn umask(mut self, mask: u32) -> Cmd {
        use std::os::unix::process::CommandExt;
        self.shown.insert(0, format!("(umask {mask:03o})"));
        // SAFETY: umask(2) is async-signal-safe and touches nothing but the child's own mask.
        unsafe {
            self.command.pre_exec(move || {
                libc::umask(mask as libc::mode_t);
                Ok(())
            });
        }
        self
    }

    pub fn timeout(mut self, d: Duration) -> Cmd {
        self.timeout = d;
        self
    }

    /// Starts the binary with `sig` ignored (SIG_IGN, inherited across exec), as `nohup` does
    /// for SIGHUP.
    pub fn ignoring_signal(mut self, sig: i32) -> Cmd {
        use std::os::unix::process::CommandExt;
        self.shown.insert(0, format!("(signal {sig} ignored)"));
        // SAFETY: between fork and exec only an async-signal-safe call (signal(2)) is made.
        unsafe {
            self.command.pre_exec(move || {
                if libc::signal(sig, libc::SIG_IGN) == libc::SIG_ERR {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        self
    }

    /// Sends stderr to `path` instead of collecting it, so a test can watch it while the run
    /// goes on ([`Out::stderr`] is then empty; read the file).
    pub fn stderr_to(mut self, path: &Path) -> Cmd {
        let file =
            fs::File::create(path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        self.command.stderr(file);
        self
    }

    /// The command line as a shell would show it (for failure messages).
    pub fn describe(&self) -> String {
        self.shown.join(" ")
    }

    /// Runs to completion (or the timeout).
    pub fn run(self) -> Out {
        self.spawn().wait()
    }

    /// Starts the process; [`Running::wait`] collects it.
    pub fn spawn(mut self) -> Running {
        let described = self.describe();
        let started = Instant::now();
        let mut child = self
            .command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {described}: {e}"));
        let stdout = drain(child.stdout.take());
        let stderr = drain(child.stderr.take());
        Running {
            child,
            cmd: described,
            started,
            timeout: self.timeout,
            stdout,
            stderr,
        }
    }
}

fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut bytes);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// A started run.
pub struct Running {
    child: Child,
    cmd: String,
    started: Instant,
    timeout: Duration,
    stdout: JoinHandle<String>,
    stderr: JoinHandle<String>,
}

impl Running {
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the exit; past the timeout the child is killed and the test fails.
    pub fn wait(self) -> Out {
        self.wait_with_status().0
    }

    /// [`wait`](Self::wait), with the exit status itself, which tells an exit with status
    /// 128 + N from death by signal N (`Out::code` is the same for both).
    pub fn wait_with_status(mut self) -> (Out, std::process::ExitStatus) {
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if self.started.elapsed() > self.timeout => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    let stdout = self.stdout.join().unwrap_or_default();
                    let stderr = self.stderr.join().unwrap_or_default();
                    panic!(
                        "`{}` did not finish within {:?} and was killed\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
                        self.cmd, self.timeout
                    );
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => panic!("waiting for `{}`: {e}", self.cmd),
            }
        };
        let elapsed = self.started.elapsed();
        let out = Out {
            code: status
                .code()
                .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)),
            stdout: self.stdout.join().unwrap_or_default(),
            stderr: self.stderr.join().unwrap_or_default(),
            cmd: self.cmd,
            elapsed,
        };
        (out, status)
    }
}

/// What a run left behind.
#[derive(Clone, Debug)]
pub struct Out {
    /// The exit code (128 + signal number when killed by a signal).
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    /// The command line, for messages.
    pub cmd: String,
    pub elapsed: Duration,
}

impl Out {
    /// The run, for failure messages.
    pub fn context(&self) -> String {
        format!(
            "command: {}\nexit code: {}  (after {:?})\n--- stdout ---\n{}\n--- stderr ---\n{}\n--------------",
            self.cmd, self.code, self.elapsed, self.stdout, self.stderr
        )
    }

    /// stdout and stderr together.
    pub fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }

    /// Fails the test, with the run's output, unless `cond` holds.
    #[track_caller]
    pub fn check(&self, cond: bool, what: impl Display) -> &Out {
        if !cond {
            panic!("{what}\n{}", self.context());
        }
        self
    }

    /// Fails the test, with both sides and the run's output, unless `got == want`.
    #[track_caller]
    pub fn check_eq<T: PartialEq + Debug>(&self, what: impl Display, got: T, want: T) -> &Out {
        if got != want {
            panic!(
                "{what}\n  got:  {got:?}\n  want: {want:?}\n{}",
                self.context()
            );
        }
        self
    }

    #[track_caller]
    pub fn expect_code(&self, want: i32) -> &Out {
        self.check_eq("exit code", self.code, want)
    }

    /// No output at all (what `--once` promises cron on success).
    #[track_caller]
    pub fn expect_silent(&self) -> &Out {
        self.check(
            self.stdout.is_empty() && self.stderr.is_empty(),
            "expected no output at all",
        )
    }

    #[track_caller]
    pub fn expect_stderr_contains(&self, needle: &str) -> &Out {
        self.check(
            self.stderr.contains(needle),
            format!("stderr should contain {needle:?}"),
        )
    }

    /// `after` (a store's document) holds the pair the server issued last, and every key of
    /// `before` the program does not own, unchanged. `place` names the store in messages.
    #[track_caller]
    pub fn expect_latest_pair(
        &self,
        place: &str,
        after: &serde_json::Value,
        server: &TokenServer,
        before: &serde_json::Value,
    ) -> &Out {
        let issued = server.last_issued();
        let owned = |doc: &serde_json::Value, key: &str| doc["claudeAiOauth"].get(key).cloned();
        self.check_eq(
            format!("accessToken in {place}"),
            owned(after, "accessToken"),
            Some(serde_json::Value::from(issued.access)),
        )
        .check_eq(
            format!("refreshToken in {place}"),
            owned(after, "refreshToken"),
            issued.refresh.map(serde_json::Value::from),
        )
        .check_eq(
            "every key the program does not own",
            crate::home::without_owned(after),
            crate::home::without_owned(before),
        )
    }

    /// None of `secrets` appears whole in stdout or stderr.
    #[track_caller]
    pub fn expect_no_secret(&self, secrets: &[String]) -> &Out {
        let all = self.all();
        for s in secrets {
            assert!(!s.is_empty(), "an empty secret cannot be looked for");
            self.check(
                !all.contains(s.as_str()),
                format!(
                    "the output contains a whole token ({}…)",
                    &s[..16.min(s.len())]
                ),
            );
        }
        self
    }

    /// Not even a long piece of `token` appears: only a masked form (a family prefix and a few
    /// trailing characters) may. Every 10-character window of the token's secret part is
    /// looked for.
    #[track_caller]
    pub fn expect_masked(&self, token: &str) -> &Out {
        let all = self.all();
        let secret = token.rsplit_once('-').map_or(token, |(_, s)| s);
        for w in secret.as_bytes().windows(10) {
            let w = std::str::from_utf8(w).expect("ASCII token");
            self.check(
                !all.contains(w),
                format!("the output contains a 10-character piece of a token ({w})"),
            );
        }
        self
    }

    /// The file is exactly as it was (bytes, mtime, inode, mode).
    #[track_caller]
    pub fn expect_untouched(&self, path: &Path, before: &FileState) -> &Out {
        let after = FileState::of(path);
        self.check_eq(
            format!("{} content changed", path.display()),
            String::from_utf8_lossy(&after.bytes),
            String::from_utf8_lossy(&before.bytes),
        );
        self.check_eq(
            format!("{} mtime changed", path.display()),
            after.mtime,
            before.mtime,
        );
        self.check_eq(
            format!("{} was replaced (inode changed)", path.display()),
            after.inode,
            before.inode,
        );
        self.check_eq(
            format!("{} mode changed", path.display()),
            after.mode,
            before.mode,
        )
    }

    /// `dir` holds nothing but names in `allowed` (no stray temp files).
    #[track_caller]
    pub fn expect_only_files(&self, dir: &Path, allowed: &[String]) -> &Out {
        let names = list_names(dir);
        let stray: Vec<&String> = names.iter().filter(|n| !allowed.contains(n)).collect();
        self.check(
            stray.is_empty(),
            format!(
                "stray files in {}: {stray:?} (all: {names:?})",
                dir.display()
            ),
        )
    }
}

/// Fails the test with both sides unless `got == want` (for checks not tied to one run).
#[track_caller]
pub fn check_eq<T: PartialEq + Debug>(what: impl Display, got: T, want: T) {
    if got != want {
        panic!("{what}\n  got:  {got:?}\n  want: {want:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Signals and liveness

/// Polls `cond` every 20 ms until it holds or `limit` passes; returns whether it held.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

/// Stops a daemon run with SIGTERM and collects it; it must exit 0.
pub fn stop(d: Running) -> Out {
    send_signal(&d, libc::SIGTERM);
    let out = d.wait();
    out.expect_code(0);
    out
}

/// Sends `sig` to a started run (kill(2) on our own, not yet reaped, child: its pid cannot
/// have been reused).
pub fn send_signal(r: &Running, sig: i32) {
    // SAFETY: kill(2) with a plain pid and signal number.
    let rc = unsafe { libc::kill(r.id() as i32, sig) };
    assert_eq!(rc, 0, "kill({}, {sig})", r.id());
}

/// Whether a started run is still running (an exited, unreaped child is a zombie, state Z).
pub fn is_running(r: &Running) -> bool {
    fs::read_to_string(format!("/proc/{}/stat", r.id()))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}
