//! Suspected weaknesses, each settled by a test that shows it (on the code before its fix): a
//! stray loopback callback ending a login, lock names from a relative config dir, and the
//! in-place write's file mode.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use claude_tokend_e2e::*;

// ---------------------------------------------------------------------------------------------
// `login --loopback`: only a callback carrying this login's state counts

/// A `login --loopback --no-browser` process, its callback port and the state it expects.
struct Loopback {
    child: Child,
    port: u16,
    state: String,
}

impl Loopback {
    fn start(home: &TempHome, server: &TokenServer) -> Loopback {
        let mut child = Command::new(bin())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", home.path())
            .env("CLAUDE_TOKEND_TOKEN_URL", server.url())
            .args(["login", "--no-browser", "--loopback"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start claude-tokend login --loopback");
        let mut url = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut url)
            .expect("the authorize URL");
        let param = |name: &str| {
            url.trim()
                .split_once('?')
                .map(|(_, q)| q)
                .unwrap_or_default()
                .split('&')
                .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
                .unwrap_or_else(|| panic!("no {name} in {url}"))
                .to_owned()
        };
        let redirect = param("redirect_uri")
            .replace("%3A", ":")
            .replace("%2F", "/");
        let port = redirect
            .trim_start_matches("http://localhost:")
            .trim_end_matches("/callback")
            .parse()
            .unwrap_or_else(|_| panic!("a loopback redirect_uri in {url}"));
        Loopback {
            child,
            port,
            state: param("state"),
        }
    }

    /// One GET to the callback server; the raw reply.
    fn get(&self, path: &str) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to the callback");
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: localhost:{}\r\n\r\n",
            self.port
        )
        .unwrap();
        let mut reply = String::new();
        let _ = s.read_to_string(&mut reply);
        reply
    }

    /// Still waiting for the browser, a moment after the last callback.
    fn still_waiting(&mut self) -> bool {
        std::thread::sleep(Duration::from_millis(300));
        matches!(self.child.try_wait(), Ok(None))
    }

    fn finish(mut self) -> Out {
        let done = wait_until(RUN_TIMEOUT, || matches!(self.child.try_wait(), Ok(Some(_))));
        if !done {
            let _ = self.child.kill();
        }
        let status = self.child.wait().expect("wait for login");
        let mut stderr = String::new();
        let _ = self
            .child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr);
        Out {
            code: status.code().unwrap_or(-1),
            stdout: String::new(),
            stderr,
            cmd: "claude-tokend login --loopback".into(),
            elapsed: Duration::ZERO,
        }
    }
}

/// Any local process can reach the callback port. A callback without this login's state, error
/// or not, is ignored (with a warning) and the login keeps waiting for the real one.
#[test]
fn a_callback_without_our_state_cannot_end_a_loopback_login() {
    let home = TempHome::new();
    let server = TokenServer::start();
    let mut run = Loopback::start(&home, &server);
    for stray in [
        "/callback?error=access_denied&error_description=stray".to_owned(),
        "/callback?error=access_denied&state=not-ours".to_owned(),
    ] {
        let reply = run.get(&stray);
        assert!(reply.starts_with("HTTP/1.1 400"), "{stray}: {reply}");
        assert!(run.still_waiting(), "{stray} ended the login");
    }
    // The real answer, with our state, still ends it (the server refuses the unknown code).
    let reply = run.get(&format!(
        "/callback?error=access_denied&state={}",
        run.state
    ));
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let out = run.finish();
    out.expect_code(1)
        .expect_stderr_contains("reported `access_denied`; nothing was saved")
        .expect_stderr_contains("ignored a callback")
        .check_eq("requests sent", server.count(), 0);
}

/// The provider's error text is printed with control characters escaped: a callback cannot
/// write terminal escape sequences into the user's terminal.
#[test]
fn a_provider_error_is_printed_with_control_characters_escaped() {
    let home = TempHome::new();
    let server = TokenServer::start();
    let run = Loopback::start(&home, &server);
    let reply = run.get(&format!(
        "/callback?error=access_denied%1b%5D0%3Bowned%07&error_description=line%0Anext%1b%5B2J&state={}",
        run.state
    ));
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let out = run.finish();
    out.expect_code(1)
        .check(
            !out.stderr.contains('\u{1b}') && !out.stderr.contains('\u{7}'),
            "no raw escape or bell character on stderr",
        )
        .check(
            !out.stderr.contains("line\nnext"),
            "no raw newline from the provider's text",
        )
        .expect_stderr_contains("access_denied")
        .expect_stderr_contains(r"\u{1b}");
}

// ---------------------------------------------------------------------------------------------
// A relative credentials path: the lock names Claude Code uses

/// Starts the binary in `dir` (the harness's `Cmd` has no working directory of its own).
fn spawn_in(dir: &Path, home: &TempHome, env: &[(&str, &str)], args: &[&str]) -> Child {
    let mut cmd = Command::new(bin());
    cmd.current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home.path())
        .envs(env.iter().copied())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd.spawn().expect("start claude-tokend")
}

fn collect(mut child: Child, what: &str) -> Out {
    if !wait_until(RUN_TIMEOUT, || matches!(child.try_wait(), Ok(Some(_)))) {
        let _ = child.kill();
    }
    let status = child.wait().expect("wait for claude-tokend");
    let (mut stdout, mut stderr) = (String::new(), String::new());
    let _ = child.stdout.take().unwrap().read_to_string(&mut stdout);
    let _ = child.stderr.take().unwrap().read_to_string(&mut stderr);
    Out {
        code: status.code().unwrap_or(-1),
        stdout,
        stderr,
        cmd: what.to_owned(),
        elapsed: Duration::ZERO,
    }
}

/// Directories whose names end in `.lock` under `dir` (not the flock file, which is a file).
fn lock_dirs_in(dir: &Path) -> Vec<String> {
    list_names(dir)
        .into_iter()
        .filter(|n| n.ends_with(".lock") && dir.join(n).is_dir())
        .collect()
}

/// Claude Code resolves its config directory to an absolute path lexically (relative to the
/// working directory, `.` and `..` collapsed, symlinks kept) and locks `<that>.lock`. A relative
/// `CLAUDE_CONFIG_DIR` or `--credentials` must lead to the same lock names: a live Claude Code
/// holding `HOME/.claude.lock` is waited for, and no `..lock` is made beside the file.
#[test]
fn a_relative_config_dir_takes_the_lock_names_claude_code_uses() {
    // (working directory under HOME, environment, arguments)
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a [&'a str]);
    let cases: [Case; 4] = [
        (".claude", &[("CLAUDE_CONFIG_DIR", ".")], &["--once"]),
        (".claude/sub", &[("CLAUDE_CONFIG_DIR", "..")], &["--once"]),
        (
            ".claude",
            &[],
            &["--once", "--credentials", ".credentials.json"],
        ),
        (
            "",
            &[],
            &[
                "--once",
                "--credentials",
                "sub/../.claude/.credentials.json",
            ],
        ),
    ];
    for (cwd, env, args) in cases {
        let what = format!("cd HOME/{cwd} && {env:?} claude-tokend {}", args.join(" "));
        let home = TempHome::new();
        let login = Login::due();
        home.write_creds(&login.doc());
        std::fs::create_dir(home.claude_dir().join("sub")).unwrap();
        std::fs::create_dir(home.path().join("sub")).unwrap();
        let server = TokenServer::for_login(&login);
        let token_url = server.url();
        let mut env = env.to_vec();
        env.push(("CLAUDE_TOKEND_TOKEN_URL", &token_url));
        // A live Claude Code refresh holds `HOME/.claude.lock` (just made, so fresh).
        let holder = home.path().join(".claude.lock");
        std::fs::create_dir(&holder).unwrap();
        let mut child = spawn_in(&home.path().join(cwd), &home, &env, args);
        let waiting = wait_until(Duration::from_secs(20), || {
            home.claude_dir().join(".oauth_refresh.lock").is_dir()
                || matches!(child.try_wait(), Ok(Some(_)))
        });
        let running = matches!(child.try_wait(), Ok(None));
        let sent_while_held = server.count();
        let made = [
            lock_dirs_in(&home.claude_dir()),
            lock_dirs_in(&home.claude_dir().join("sub")),
            lock_dirs_in(&home.path().join("sub")),
        ]
        .concat();
        std::fs::remove_dir(&holder).unwrap();
        let out = collect(child, &what);
        out.check(
            waiting && running,
            format!(
                "{what}: should take .claude/.oauth_refresh.lock and wait for HOME/.claude.lock"
            ),
        )
        .check_eq(
            format!("{what}: requests sent while Claude Code held its lock"),
            sent_while_held,
            0,
        )
        .check_eq(
            format!("{what}: lock directories beside the file while waiting"),
            made,
            vec![".oauth_refresh.lock".to_owned()],
        )
        .expect_code(0)
        .check_eq("requests sent", server.count(), 1)
        .check_eq(
            "leftovers (besides the test's own sub/)",
            leftovers(&home)
                .into_iter()
                .filter(|n| n != "sub")
                .collect::<Vec<_>>(),
            Vec::<String>::new(),
        );
    }
}

/// Messages name the file by its absolute path, not as typed relative to somewhere unknown.
#[test]
fn a_relative_location_is_reported_as_an_absolute_path() {
    let home = TempHome::new();
    home.write_creds(&Login::fresh().doc());
    let child = spawn_in(
        &home.claude_dir(),
        &home,
        &[("CLAUDE_CONFIG_DIR", ".")],
        &["status"],
    );
    let out = collect(
        child,
        "cd HOME/.claude && CLAUDE_CONFIG_DIR=. claude-tokend status",
    );
    out.expect_code(0).check(
        out.stdout
            .contains(&home.creds_path().display().to_string()),
        format!("status should name {}", home.creds_path().display()),
    );
}

// ---------------------------------------------------------------------------------------------
// The in-place fallback leaves the file 0600

/// A bind-mounted file refuses rename (the debug seam makes rename fail with EBUSY), so it is
/// written in place; a file that was 0644 is 0600 afterwards, as after every write.
#[test]
fn the_in_place_fallback_leaves_a_0644_file_0600() {
    use std::os::unix::fs::PermissionsExt;
    let home = TempHome::new();
    let login = Login::due();
    home.write_creds(&login.doc());
    std::fs::set_permissions(home.creds_path(), std::fs::Permissions::from_mode(0o644)).unwrap();
    let server = TokenServer::for_login(&login);
    let before = home.state();
    let out = Cmd::new(&home)
        .server(&server)
        .env("CLAUDE_TOKEND_TEST_RENAME_ERRNO", "16")
        .arg("--once")
        .run();
    out.expect_code(0)
        .check_eq("requests sent", server.count(), 1)
        .check_eq(
            "inode (written in place; if this fails, is the binary built with the test seams?)",
            home.state().inode,
            before.inode,
        )
        .check_eq(
            "refreshToken saved",
            home.read_creds()["claudeAiOauth"]["refreshToken"]
                .as_str()
                .map(str::to_owned),
            server.last_issued().refresh,
        )
        .check_eq("mode", format!("{:o}", home.mode()), "600".to_owned());
}
