//! `--mirror-cmd CMD` (`CLAUDE_TOKEND_MIRROR_CMD`): the daemon runs it with `sh -c` at start and
//! after each change of a login's mirrored document, with `CLAUDE_TOKEND_LOGIN` and
//! `CLAUDE_TOKEND_EVENT` (`update` with the access-only document on stdin, `logout` with empty
//! stdin), never a token in its arguments or environment, its output discarded; a failing run
//! is retried with the transient backoff (from about a second). `--once` and `refresh` run it
//! only when they obtained new tokens.
//!
//! The command here records each run (its stdin, its `env`, its arguments) as files in an
//! inbox directory, each run's files renamed into place whole, and the tests read them back.

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use claude_tokend_e2e::*;
use serde_json::{Value, json};

const SOON: Duration = Duration::from_secs(8);

/// What one run of the command saw.
#[derive(Debug)]
struct Run {
    env: BTreeMap<String, String>,
    stdin: String,
}

impl Run {
    fn event(&self) -> &str {
        self.env
            .get("CLAUDE_TOKEND_EVENT")
            .map_or("", String::as_str)
    }

    /// The document on stdin (Null when it is not JSON).
    fn doc(&self) -> Value {
        serde_json::from_str(&self.stdin).unwrap_or(Value::Null)
    }

    fn access(&self) -> Option<String> {
        self.doc()["claudeAiOauth"]["accessToken"]
            .as_str()
            .map(str::to_owned)
    }
}

struct Inbox {
    dir: PathBuf,
}

impl Inbox {
    fn new(home: &TempHome) -> Inbox {
        let dir = home.path().join("inbox");
        fs::create_dir(&dir).expect("mkdir inbox");
        Inbox { dir }
    }

    /// Records the run (stdin, arguments, environment: the environment renamed in last, so a
    /// run is complete once its `.env` exists), prints on both outputs (which must never reach
    /// the daemon's log), then runs `tail` (its exit status is the command's).
    fn command_then(&self, tail: &str) -> String {
        let d = self.dir.display();
        format!(
            "d='{d}'; n=$(date +%s%N); p=\"$d/.part.$$\"; \
             cat > \"$p.in\"; printf '%s\\n' \"$0\" \"$@\" > \"$p.args\"; env > \"$p.env\"; \
             mv \"$p.in\" \"$d/$n.in\"; mv \"$p.args\" \"$d/$n.args\"; mv \"$p.env\" \"$d/$n.env\"; \
             echo MIRROR-CMD-STDOUT; echo MIRROR-CMD-STDERR >&2; {tail}"
        )
    }

    fn command(&self) -> String {
        self.command_then("exit 0")
    }

    fn runs(&self) -> Vec<Run> {
        let mut stamps: Vec<String> = list_names(&self.dir)
            .into_iter()
            .filter_map(|n| n.strip_suffix(".env").map(str::to_owned))
            .filter(|n| !n.starts_with('.'))
            .collect();
        stamps.sort();
        stamps
            .iter()
            .map(|n| {
                let read = |ext: &str| {
                    fs::read_to_string(self.dir.join(format!("{n}.{ext}"))).unwrap_or_default()
                };
                Run {
                    env: read("env")
                        .lines()
                        .filter_map(|l| l.split_once('='))
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                        .collect(),
                    stdin: read("in"),
                }
            })
            .collect()
    }

    /// Every byte the runs saw in their environment and arguments.
    fn env_and_args(&self) -> String {
        list_names(&self.dir)
            .iter()
            .filter(|n| n.ends_with(".env") || n.ends_with(".args"))
            .map(|n| fs::read_to_string(self.dir.join(n)).unwrap_or_default())
            .collect()
    }
}

fn daemon(home: &TempHome, server: &TokenServer, cmd: &str) -> Running {
    Cmd::new(home)
        .server(server)
        .args(["--refresh-before", "10s", "--mirror-cmd", cmd])
        .timeout(Duration::from_secs(60))
        .spawn()
}

/// The access-only document of the source as it is now: what stdin must carry.
fn expected_doc(home: &TempHome) -> Value {
    expected_mirror(&home.read_creds(), &json!({}))
}

/// No token, nor even the `sk-ant-` family prefix, in any run's environment or arguments.
#[track_caller]
fn expect_no_token_outside_stdin(out: &Out, inbox: &Inbox, tokens: &[String]) {
    let text = inbox.env_and_args();
    out.check(
        !text.contains("sk-ant-") && tokens.iter().all(|t| !text.contains(t.as_str())),
        format!("a token in the command's environment or arguments:\n{text}"),
    );
}

#[test]
fn the_command_runs_at_start_with_the_document_on_stdin_and_no_token_elsewhere() {
    for by_variable in [false, true] {
        let home = TempHome::new();
        let login = Login::fresh();
        home.write_creds(&login.doc());
        let server = TokenServer::for_login(&login);
        let inbox = Inbox::new(&home);
        let d = if by_variable {
            Cmd::new(&home)
                .server(&server)
                .env("CLAUDE_TOKEND_MIRROR_CMD", inbox.command())
                .timeout(Duration::from_secs(60))
                .spawn()
        } else {
            daemon(&home, &server, &inbox.command())
        };
        let ran = wait_until(SOON, || !inbox.runs().is_empty());
        // No change after it: no second run.
        std::thread::sleep(Duration::from_millis(1000));
        let out = stop(d);
        let runs = inbox.runs();
        out.check(ran, format!("ran at start (variable: {by_variable})"))
            .check_eq("runs", runs.len(), 1)
            .check_eq("event", runs[0].event(), "update")
            .check_eq(
                "CLAUDE_TOKEND_LOGIN",
                runs[0].env.get("CLAUDE_TOKEND_LOGIN").cloned(),
                Some(home.creds_path().display().to_string()),
            )
            .check_eq("the document on stdin", runs[0].doc(), expected_doc(&home))
            .check(
                !out.all().contains("MIRROR-CMD-STD"),
                "the command's output is discarded",
            )
            .expect_no_secret(&login.secrets());
        expect_no_token_outside_stdin(&out, &inbox, &login.secrets());
    }
}

#[test]
fn after_a_refresh_it_runs_again_with_the_new_document() {
    let home = TempHome::new();
    // Due 2 s after start under the 10 s lead.
    let login = Login::expiring_in(12);
    home.write_creds(&login.doc());
    let server = TokenServer::for_login(&login);
    let inbox = Inbox::new(&home);
    let d = daemon(&home, &server, &inbox.command());
    let ran = wait_until(SOON, || {
        server.count() == 1
            && inbox
                .runs()
                .last()
                .is_some_and(|r| r.access() == Some(server.last_issued().access))
    });
    let out = stop(d);
    let runs = inbox.runs();
    out.check(ran, format!("ran with the new token: {runs:#?}"))
        .check_eq(
            "the first run had the old token",
            runs[0].access(),
            Some(login.access.clone()),
        )
        .check_eq(
            "the last run's document",
            runs.last().unwrap().doc(),
            expected_doc(&home),
        )
        .check(
            runs.iter().all(|r| r.event() == "update"),
            "every run an update",
        );
    let issued = server.last_issued();
    let mut tokens = login.secrets();
    tokens.push(issued.access.clone());
    tokens.extend(issued.refresh.clone());
    expect_no_token_outside_stdin(&out, &inbox, &tokens);
    for r in &runs {
        out.check(
            !r.stdin.contains(&login.refresh)
                && issued
                    .refresh
                    .as_deref()
                    .is_none_or(|t| !r.stdin.contains(t)),
            "no refresh token on stdin",
        );
    }
}

#[test]
fn on_logout_it_runs_with_event_logout_and_empty_stdin() {
    let home = TempHome::new();
    let login = Login::fresh();
    home.write_creds(&login.doc());
    let server = TokenServer::for_login(&login);
    let inbox = Inbox::new(&home);
    let d = daemon(&home, &server, &inbox.command());
    assert!(wait_until(SOON, || inbox.runs().len() == 1), "ran at start");
    Cmd::new(&home)
        .args(["logout", "--yes"])
        .run()
        .expect_code(0);
    let told = wait_until(SOON, || inbox.runs().len() >= 2);
    let out = stop(d);
    let runs = inbox.runs();
    out.check(told, "ran after the logout")
        .check_eq("runs", runs.len(), 2)
        .check_eq("event", runs[1].event(), "logout")
        .check_eq("stdin", runs[1].stdin.as_str(), "")
        .check_eq(
            "CLAUDE_TOKEND_LOGIN",
            runs[1].env.get("CLAUDE_TOKEND_LOGIN").cloned(),
            Some(home.creds_path().display().to_string()),
        );
}

/// A command that fails twice, then works: run again with the same document without any
/// change of the source, the first retries within a few seconds, not again once it worked, and
/// the failure logged once.
#[test]
fn a_failing_command_is_retried_until_it_works() {
    let home = TempHome::new();
    let login = Login::fresh();
    home.write_creds(&login.doc());
    let server = TokenServer::for_login(&login);
    let inbox = Inbox::new(&home);
    let count = home.path().join("count");
    let cmd = inbox.command_then(&format!(
        "echo x >> '{c}'; [ \"$(wc -l < '{c}')\" -ge 3 ]",
        c = count.display()
    ));
    let d = daemon(&home, &server, &cmd);
    let retried = wait_until(SOON, || inbox.runs().len() >= 3);
    // It worked on the third run: nothing more without a change.
    std::thread::sleep(Duration::from_millis(1500));
    let out = stop(d);
    let runs = inbox.runs();
    out.check(
        retried,
        format!("retried after failing: {} runs", runs.len()),
    )
    .check_eq("runs", runs.len(), 3)
    .check(
        runs.iter().all(|r| r.doc() == expected_doc(&home)),
        "each run had the same, current document",
    )
    .check_eq("requests", server.count(), 0);
    // Two failures, one success: the failure is told once (and its end, perhaps), not per run.
    let told = out
        .stderr
        .lines()
        .filter(|l| l.to_lowercase().contains("mirror"))
        .count();
    out.check(
        (1..=2).contains(&told),
        format!("the failure logged once until it works ({told} lines about it)"),
    );
}

/// One run per login at a time: changes during a run queue one more run, with the newest
/// document, which starts only once the first has ended.
#[test]
fn changes_during_a_run_queue_one_run_with_the_newest_document() {
    let home = TempHome::new();
    home.write_creds(&Login::fresh().doc());
    let server = TokenServer::start();
    let inbox = Inbox::new(&home);
    // Each run leaves `<start>.end` (its end time) after a second's work.
    let cmd = inbox.command_then("sleep 1; date +%s%N > \"$d/$n.end\"");
    let d = daemon(&home, &server, &cmd);
    assert!(wait_until(SOON, || inbox.runs().len() == 1), "ran at start");
    let (middle, newest) = (Login::fresh(), Login::fresh());
    replace_atomically(&home.creds_path(), &middle.doc());
    std::thread::sleep(Duration::from_millis(200));
    replace_atomically(&home.creds_path(), &newest.doc());
    let ran = wait_until(SOON, || inbox.runs().len() >= 2);
    // Its second run done, and time for any further one to start.
    std::thread::sleep(Duration::from_millis(1500));
    let out = stop(d);
    let runs = inbox.runs();
    let stamps: Vec<String> = list_names(&inbox.dir)
        .into_iter()
        .filter_map(|n| n.strip_suffix(".env").map(str::to_owned))
        .filter(|n| !n.starts_with('.'))
        .collect();
    let end_of_first: Option<u128> =
        fs::read_to_string(inbox.dir.join(format!("{}.end", stamps[0])))
            .ok()
            .and_then(|t| t.trim().parse().ok());
    let start_of_second: Option<u128> = stamps.get(1).and_then(|s| s.parse().ok());
    out.check(ran, "ran again after the changes")
        .check_eq(
            "runs: the start, then one with the newest document",
            runs.iter().map(Run::access).collect::<Vec<_>>(),
            vec![
                runs[0].access(),
                Some(newest.access.clone()),
            ],
        )
        .check(
            end_of_first.is_some() && start_of_second >= end_of_first,
            format!("the second run started after the first ended ({start_of_second:?} >= {end_of_first:?})"),
        );
}

/// A command that hangs (a host that does not answer) holds up nothing: the due login is
/// refreshed and the mirror follows as if there were no command, and SIGTERM still stops the
/// daemon at once (the command is left to its 30 s timeout or to finish).
#[test]
fn a_hanging_command_never_holds_up_the_refresh_or_the_mirror() {
    let home = TempHome::new();
    // Due 1 s after start under the 10 s lead.
    let login = Login::expiring_in(11);
    home.write_creds(&login.doc());
    let server = TokenServer::for_login(&login);
    let dir = home.path().join("mirror");
    let d = Cmd::new(&home)
        .server(&server)
        .args([
            "--refresh-before",
            "10s",
            "--mirror-cmd",
            "sleep 5",
            "--mirror",
        ])
        .arg(&dir)
        .timeout(Duration::from_secs(60))
        .spawn();
    let followed = wait_until(SOON, || {
        server.count() == 1 && mirror_access(&dir) == Some(server.last_issued().access)
    });
    let t = std::time::Instant::now();
    let out = stop(d);
    out.check(followed, "refreshed and mirrored while the command hangs")
        .check(
            t.elapsed() < Duration::from_secs(3),
            format!("stopped in {:?}", t.elapsed()),
        );
    let why = mirror_mismatch(&dir, &home.read_creds(), &json!({}));
    out.check(why.is_none(), format!("the mirror: {why:?}"));
}

/// `--once` runs it only when it obtained new tokens; `refresh` always does.
#[test]
fn once_runs_the_command_only_when_it_refreshed() {
    let home = TempHome::new();
    let fresh = Login::fresh();
    home.write_creds(&fresh.doc());
    let server = TokenServer::for_login(&fresh);
    let inbox = Inbox::new(&home);
    let once = |args: &[&str]| {
        Cmd::new(&home)
            .server(&server)
            .args(args)
            .args(["--mirror-cmd", &inbox.command()])
            .run()
    };
    once(&["--once"]).expect_code(0).expect_silent();
    // Were it run in the background, it would have written its files by now.
    std::thread::sleep(Duration::from_millis(1000));
    check_eq(
        "runs after a --once that did not refresh",
        inbox.runs().len(),
        0,
    );

    let due = Login::due();
    home.write_creds(&due.doc());
    server.accept_refresh(&due.refresh);
    let out = once(&["--once"]);
    out.expect_code(0);
    let ran = wait_until(SOON, || inbox.runs().len() == 1);
    out.check(ran, "ran after a --once that refreshed")
        .check_eq("the event", inbox.runs()[0].event(), "update")
        .check_eq("the document", inbox.runs()[0].doc(), expected_doc(&home))
        .check(
            inbox.runs()[0].access() == Some(server.last_issued().access),
            "with the new token",
        );

    let out = once(&["refresh"]);
    out.expect_code(0);
    let ran = wait_until(SOON, || inbox.runs().len() == 2);
    out.check(ran, "ran after refresh").check_eq(
        "with the new token",
        inbox.runs()[1].access(),
        Some(server.last_issued().access),
    );
    let mut tokens = fresh.secrets();
    tokens.extend(due.secrets());
    for i in server.issued() {
        tokens.push(i.access.clone());
        tokens.extend(i.refresh.clone());
    }
    expect_no_token_outside_stdin(&out, &inbox, &tokens);
}
