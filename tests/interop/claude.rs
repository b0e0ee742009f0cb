//! The real Claude Code CLI, through `real-claude-code` (see its header): finding the tool (or
//! saying why the test is skipped), starting its proxy in front of an [`Upstream`], and running
//! `claude` as a consumer would, with its own HOME and `CLAUDE_CONFIG_DIR`.
//!
//! [`Upstream`]: crate::upstream::Upstream

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long starting the proxy may take: the first start installs Claude Code from the npm
/// registry (about 10 s measured, more on a slow network).
const PROXY_START_LIMIT: Duration = Duration::from_secs(300);

/// How long one `claude -p` may take (under 1 s measured once installed).
const CLAUDE_LIMIT: Duration = Duration::from_secs(60);

/// Says something on the test's stderr even when the harness captures output (the `eprintln!`
/// macro is captured; a write to the stderr handle is not): a skip must never be silent.
pub fn say(what: &str) {
    let _ = writeln!(std::io::stderr(), "interop: {what}");
}

/// Whether `name` is an executable file somewhere on PATH.
fn on_path(name: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::env::var_os("PATH").is_some_and(|p| {
        std::env::split_paths(&p).any(|d| {
            std::fs::metadata(d.join(name))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

/// The `real-claude-code` tool: `$REAL_CLAUDE_CODE`, else `../shared/tools/real-claude-code`
/// beside the workspace. `Err` says why the test cannot run here.
fn find_tool() -> Result<PathBuf, String> {
    let tool = match std::env::var_os("REAL_CLAUDE_CODE") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/tools/real-claude-code"),
    };
    if !tool.is_file() {
        return Err(format!(
            "no real-claude-code tool at {} (set REAL_CLAUDE_CODE to its path)",
            tool.display()
        ));
    }
    // npm installs Claude Code on first use; the tool itself is Python and makes its
    // certificates with openssl.
    for needed in ["npm", "python3", "openssl"] {
        if !on_path(needed) {
            return Err(format!(
                "{needed} is not on PATH (real-claude-code needs it)"
            ));
        }
    }
    Ok(tool)
}

/// The tool, or `None` after printing why the test is skipped.
pub fn tool_or_skip(test: &str) -> Option<PathBuf> {
    match find_tool() {
        Ok(t) => Some(t),
        Err(why) => {
            say(&format!("skipped: {test}: {why}"));
            None
        }
    }
}

/// One proxy start at a time in this process: two first starts at once would run two npm
/// installs into the same directory.
static STARTING: Mutex<()> = Mutex::new(());

/// `real-claude-code proxy` running in front of an upstream: the `claude` binary and the
/// environment to run it with. Stopped on drop (its stdin closed, then killed).
pub struct Proxy {
    child: Child,
    stdin: Option<ChildStdin>,
    claude: PathBuf,
    env: Vec<(String, String)>,
    stderr: Arc<Mutex<String>>,
    stderr_reader: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Starts the proxy for `upstream` (`http://127.0.0.1:PORT`) with this process's own
    /// environment, so Claude Code is installed once into the caller's cache and reused.
    pub fn start(tool: &Path, upstream: &str) -> Proxy {
        let _one = STARTING.lock().unwrap_or_else(|p| p.into_inner());
        let started = Instant::now();
        let mut child = Command::new(tool)
            .args(["proxy", "--upstream", upstream])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", tool.display()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let stderr_reader = {
            let mut pipe = child.stderr.take().expect("piped stderr");
            let stderr = Arc::clone(&stderr);
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    stderr
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push_str(&text);
                }
            })
        };
        // The lines up to READY, read on a thread so a hung install meets the deadline.
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let ready = line == "READY";
                if tx.send(line).is_err() || ready {
                    break;
                }
            }
        });
        let mut proxy = Proxy {
            stdin: child.stdin.take(),
            child,
            claude: PathBuf::new(),
            env: Vec::new(),
            stderr,
            stderr_reader: Some(stderr_reader),
        };
        loop {
            let left = PROXY_START_LIMIT.saturating_sub(started.elapsed());
            let line = match rx.recv_timeout(left) {
                Ok(line) => line,
                Err(e) => {
                    let why = format!("{e:?}");
                    proxy.stop();
                    panic!(
                        "real-claude-code proxy did not print READY ({why}) after {:?}\n--- its stderr ---\n{}",
                        started.elapsed(),
                        proxy.stderr()
                    );
                }
            };
            if line == "READY" {
                break;
            }
            match line.split_once('=') {
                Some(("CLAUDE", path)) => proxy.claude = PathBuf::from(path),
                Some((k, v)) => proxy.env.push((k.to_owned(), v.to_owned())),
                None => panic!("real-claude-code proxy printed {line:?}"),
            }
        }
        assert!(
            proxy.claude.is_file(),
            "real-claude-code named no claude binary (got {:?})",
            proxy.claude
        );
        say(&format!(
            "real-claude-code proxy ready in {:.1} s (a first start installs Claude Code)",
            started.elapsed().as_secs_f64()
        ));
        proxy
    }

    fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Runs `claude ARGS` in `cwd` with only PATH, `home` as HOME, `config_dir` as
    /// `CLAUDE_CONFIG_DIR` and the proxy's variables: nothing of the caller's (no API key, no
    /// other proxy) reaches it.
    pub fn claude(&self, home: &Path, config_dir: &Path, cwd: &Path, args: &[&str]) -> Run {
        let mut cmd = Command::new(&self.claude);
        cmd.env_clear()
            .args(args)
            .current_dir(cwd)
            .env("HOME", home)
            .env("CLAUDE_CONFIG_DIR", config_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(path) = std::env::var_os("PATH") {
            cmd.env("PATH", path);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let started = Instant::now();
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.claude.display()));
        let out = drain(child.stdout.take());
        let err = drain(child.stderr.take());
        let status = loop {
            if let Some(s) = child.try_wait().expect("waiting for claude") {
                break s;
            }
            if started.elapsed() > CLAUDE_LIMIT {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "claude {args:?} did not finish within {CLAUDE_LIMIT:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                    out.join().unwrap_or_default(),
                    err.join().unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        Run {
            code: status.code().unwrap_or(-1),
            stdout: out.join().unwrap_or_default(),
            stderr: err.join().unwrap_or_default(),
            elapsed: started.elapsed(),
        }
    }

    fn stop(&mut self) {
        // Closing stdin is the tool's way to stop; the kill is for a proxy still installing.
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(t) = self.stderr_reader.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
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

/// What one `claude` run left.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Run {
    /// The run, for failure messages.
    pub fn context(&self) -> String {
        format!(
            "claude exit code: {} (after {:?})\n--- claude stdout ---\n{}\n--- claude stderr ---\n{}",
            self.code, self.elapsed, self.stdout, self.stderr
        )
    }
}
