//! `doctor [--json] [--offline]`: why a login might be lost, or not used by Claude Code, and
//! what to do about it (CONTRACT.md "`doctor`"). It gathers the facts once (the environment,
//! each login's store, its lock directories, its keepers, its mirrors, the service manager's
//! answer, one `Date` header), and each check is a pure function from those facts to one line:
//! ok, warn or fail, what it saw and, unless ok, what to do.
//!
//! It only looks. It never refreshes, never writes, never creates a file (not even the
//! program's own lock file, which it only peeks at), never takes a lock (a Claude Code lock
//! directory is judged by its mtime) and never prints a token, masked or not. The one request
//! it makes is the clock probe, a `HEAD /` that carries no secret; `--offline` leaves it out.
//!
//! The checks live beside this file by group: `environment` (what shadows the stored login,
//! which store Claude Code reads), `store` (the store and the login in it), `locks`, `keeper`
//! (who keeps it fresh, with `service` asking systemd or launchd and `service_text` reading
//! their answers and files), `mirrors` and `clock`.

mod clock;
mod environment;
mod keeper;
mod locks;
mod mirrors;
mod service;
mod service_text;
mod store;

use std::fmt::Write as _;
use std::time::SystemTime;

use serde_json::json;
use tokend_core::schedule::epoch_millis;

use crate::cli::Settings;
use crate::exit;
use crate::show::{emit, login_id};

/// A check's verdict, ordered from best to worst.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    Ok,
    Warn,
    Fail,
}

impl Verdict {
    fn name(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Warn => "warn",
            Verdict::Fail => "fail",
        }
    }
}

/// One line of the report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// The login it concerns, as `CLAUDE_TOKEND_LOGIN` names it; `None` for the machine.
    pub login: Option<String>,
    /// The check's name (`store`, `clock`, ...), the same in text and JSON.
    pub name: &'static str,
    pub verdict: Verdict,
    /// What it saw.
    pub detail: String,
    /// What to do; `None` exactly when the verdict is ok.
    pub fix: Option<String>,
}

impl Check {
    pub fn ok(name: &'static str, detail: impl Into<String>) -> Check {
        Check {
            login: None,
            name,
            verdict: Verdict::Ok,
            detail: detail.into(),
            fix: None,
        }
    }

    pub fn warn(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            verdict: Verdict::Warn,
            fix: Some(fix.into()),
            ..Check::ok(name, detail)
        }
    }

    pub fn fail(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            verdict: Verdict::Fail,
            ..Check::warn(name, detail, fix)
        }
    }

    /// The same check, about `login`.
    fn of(self, login: &str) -> Check {
        Check {
            login: Some(login.to_owned()),
            ..self
        }
    }
}

/// What one check found, before it becomes a line: several findings of one check are one line
/// (the worst verdict; every problem's text, and the fixes of them all).
#[derive(Default)]
pub struct Findings {
    problems: Vec<(Verdict, String, String)>,
}

impl Findings {
    pub fn warn(&mut self, detail: impl Into<String>, fix: impl Into<String>) {
        self.problems
            .push((Verdict::Warn, detail.into(), fix.into()));
    }

    pub fn fail(&mut self, detail: impl Into<String>, fix: impl Into<String>) {
        self.problems
            .push((Verdict::Fail, detail.into(), fix.into()));
    }

    pub fn is_empty(&self) -> bool {
        self.problems.is_empty()
    }

    /// The line: `ok_detail` when nothing was found, else the problems, worst first.
    pub fn into_check(mut self, name: &'static str, ok_detail: impl Into<String>) -> Check {
        if self.problems.is_empty() {
            return Check::ok(name, ok_detail);
        }
        // Stable: problems of one verdict keep the order they were found in.
        self.problems.sort_by_key(|(v, _, _)| std::cmp::Reverse(*v));
        let verdict = self.problems[0].0;
        let detail = sentences(self.problems.iter().map(|(_, d, _)| d.as_str()));
        let mut fixes: Vec<&str> = Vec::new();
        for (_, _, fix) in &self.problems {
            if !fixes.contains(&fix.as_str()) {
                fixes.push(fix);
            }
        }
        Check {
            login: None,
            name,
            verdict,
            detail,
            fix: Some(sentences(fixes.into_iter())),
        }
    }
}

/// A path as a command to paste needs it: as it is when it holds only plain path characters,
/// else in single quotes.
pub fn sh(path: &std::path::Path) -> String {
    let s = path.to_string_lossy();
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+,:@=%~".contains(c))
    {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The flag that names the login whose credentials path is `path`: `--config-dir DIR` for
/// `DIR/.credentials.json`, else `--credentials PATH`.
pub fn login_flag(path: &std::path::Path) -> String {
    match path.parent() {
        Some(dir) if path.file_name() == Some(tokend_core::store::FILE_NAME.as_ref()) => {
            format!("--config-dir {}", sh(dir))
        }
        _ => format!("--credentials {}", sh(path)),
    }
}

/// Texts joined as sentences: `a; b; c`.
fn sentences<'a>(parts: impl Iterator<Item = &'a str>) -> String {
    parts.collect::<Vec<_>>().join("; ")
}

/// `doctor [--json] [--offline]`: every check, printed; exit 1 when one fails.
pub fn doctor(settings: &Settings, as_json: bool, offline: bool) -> u8 {
    let configured = match crate::mirrors::configured(settings) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let now = epoch_millis(SystemTime::now());
    let service = service::ask();
    let mut checks = vec![
        environment::shadowing(&environment::Shadowing::from_process()),
        environment::claude_code_store(&environment::ShellStore::from_process(), &service),
    ];
    for (store, mirrors) in configured.stores.iter().zip(&configured.mirrors) {
        let id = login_id(store);
        let facts = store::Facts::gather(store);
        let mut about = vec![store::store_check(&facts)];
        about.extend(store::login_check(&facts, now));
        about.push(locks::check(&locks::Facts::gather(store), now));
        about.push(keeper::check(&keeper::Facts::gather(store, &service)));
        if !mirrors.is_empty() {
            about.push(mirrors::check(&mirrors::Facts::gather(&facts, mirrors)));
        }
        checks.extend(about.into_iter().map(|c| c.of(&id)));
    }
    if !offline {
        checks.push(clock::check(&clock::Facts::gather(settings)));
    }
    let out = if as_json {
        render_json(&checks)
    } else {
        render_text(&checks, configured.stores.len() > 1)
    };
    if let Err(code) = emit(out.as_bytes()) {
        return code;
    }
    if checks.iter().any(|c| c.verdict == Verdict::Fail) {
        exit::FAILURE
    } else {
        exit::OK
    }
}

/// `{"checks":[{"login":…,"check":…,"result":…,"detail":…,"fix":…}]}`.
fn render_json(checks: &[Check]) -> String {
    let list: Vec<serde_json::Value> = checks
        .iter()
        .map(|c| {
            json!({
                "login": c.login,
                "check": c.name,
                "result": c.verdict.name(),
                "detail": c.detail,
                "fix": c.fix,
            })
        })
        .collect();
    let doc = json!({ "checks": list });
    serde_json::to_string_pretty(&doc).expect("a JSON value always serializes") + "\n"
}

/// One line per check: `warn  login: what it saw. Fix: what to do`. With several logins each
/// login's lines name it.
fn render_text(checks: &[Check], many: bool) -> String {
    let mut out = String::new();
    for c in checks {
        let _ = write!(out, "{:<5} {}", c.verdict.name(), c.name);
        if let (true, Some(login)) = (many, &c.login) {
            let _ = write!(out, " ({})", one_line(login));
        }
        let _ = write!(out, ": {}", one_line(&c.detail));
        if let Some(fix) = &c.fix {
            let _ = write!(out, ". Fix: {}", one_line(fix));
        }
        out.push('\n');
    }
    out
}

/// A text for one line of a terminal: control characters (a newline or an escape sequence in
/// a path or a variable) shown escaped, so one check stays one line and nothing it names can
/// move the cursor or fake another line. JSON keeps the text as it is (it escapes them itself).
fn one_line(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_owned();
    }
    text.chars()
        .map(|c| match c {
            c if c.is_control() => c.escape_default().to_string(),
            c => c.to_string(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_in_what_a_check_names_stay_on_one_line() {
        let mut c = Check::ok("store", "/tmp/a\nfail  store: fake\u{1b}[2J");
        c.fix = Some("rm '/x\ry'".to_owned());
        let text = render_text(&[c], false);
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(
            !text.chars().any(|ch| ch.is_control() && ch != '\n'),
            "{text:?}"
        );
        assert!(text.contains("\\n") && text.contains("\\u{1b}"), "{text}");
        assert_eq!(one_line("plain ✓"), "plain ✓");
    }

    #[test]
    fn findings_make_one_line_with_the_worst_verdict_first() {
        let none = Findings::default().into_check("store", "fine");
        assert_eq!(none, Check::ok("store", "fine"));
        let mut f = Findings::default();
        f.warn("mode 0644", "chmod 600 x");
        f.fail("owned by root", "sudo chown");
        f.warn("again", "chmod 600 x");
        let c = f.into_check("store", "fine");
        assert_eq!(c.verdict, Verdict::Fail);
        assert_eq!(c.detail, "owned by root; mode 0644; again");
        assert_eq!(c.fix.as_deref(), Some("sudo chown; chmod 600 x"));
    }

    #[test]
    fn paths_in_commands_are_quoted_when_they_need_it() {
        use std::path::Path;
        assert_eq!(sh(Path::new("/home/u/.claude")), "/home/u/.claude");
        assert_eq!(sh(Path::new("/a b/it's")), r"'/a b/it'\''s'");
        assert_eq!(
            login_flag(Path::new("/a b/.credentials.json")),
            "--config-dir '/a b'"
        );
        assert_eq!(
            login_flag(Path::new("/x/creds.json")),
            "--credentials /x/creds.json"
        );
    }

    #[test]
    fn text_and_json_carry_the_same_lines() {
        let checks = vec![
            Check::ok("clock", "within 1s"),
            Check::fail("store", "missing", "sign in").of("/h/.claude/.credentials.json"),
        ];
        let text = render_text(&checks, true);
        assert_eq!(
            text,
            "ok    clock: within 1s\n\
             fail  store (/h/.claude/.credentials.json): missing. Fix: sign in\n"
        );
        let doc: serde_json::Value = serde_json::from_str(&render_json(&checks)).unwrap();
        assert_eq!(
            doc,
            json!({"checks": [
                {"login": null, "check": "clock", "result": "ok", "detail": "within 1s",
                 "fix": null},
                {"login": "/h/.claude/.credentials.json", "check": "store", "result": "fail",
                 "detail": "missing", "fix": "sign in"},
            ]})
        );
    }
}
