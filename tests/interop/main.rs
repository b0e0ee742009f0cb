//! Interop with the real Claude Code CLI (CONTRACT.md "Access-only copies for containers and
//! other machines"): Claude Code whose `CLAUDE_CONFIG_DIR` is a mirror claude-tokend keeps runs
//! on the access-only copy, never asks for a refresh, and after claude-tokend refreshed the
//! source (and the upstream refuses the old access token) runs again from the rewritten copy,
//! whether that happens between two runs or in the middle of a session.
//!
//! Claude Code comes from `real-claude-code` (`$REAL_CLAUDE_CODE`, else
//! `../shared/tools/real-claude-code` beside the workspace), which installs it once from the npm
//! registry and puts a TLS-terminating proxy between it and [`upstream::Upstream`]. Without the
//! tool or npm each test prints `skipped: <why>` on stderr and passes.
//!
//! A separate target, not in `cargo test --workspace` (it downloads Claude Code on first use):
//! run `cargo test -p claude-tokend-e2e --test interop` after the workspace build (the binary
//! is the one the end-to-end suite uses).

mod claude;
mod upstream;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use claude_tokend_e2e::*;
use serde_json::Value;

use claude::{Proxy, Run, say, tool_or_skip};
use upstream::{Seen, Upstream};

/// The access token a mirror file holds now (`None`: no file, not JSON, or no token in it).
fn mirrored_access(dir: &Path) -> Option<String> {
    let bytes = fs::read(dir.join(".credentials.json")).ok()?;
    let doc: Value = serde_json::from_slice(&bytes).ok()?;
    doc["claudeAiOauth"]["accessToken"]
        .as_str()
        .map(str::to_owned)
}

/// The mirror is an access-only copy: the source's access token and scopes, no refresh token
/// (neither the key nor any refresh token the source ever held anywhere in the bytes), and none
/// of the source's other keys (inside `claudeAiOauth` or beside it).
#[track_caller]
fn check_access_only(dir: &Path, access: &str, refresh_tokens: &[&str]) {
    let path = dir.join(".credentials.json");
    let text = fs::read_to_string(&path).expect("reading the mirror file");
    let doc: Value = serde_json::from_str(&text).expect("the mirror file is JSON");
    let oauth = &doc["claudeAiOauth"];
    check_eq(
        "the mirror's accessToken",
        oauth["accessToken"].as_str(),
        Some(access),
    );
    check_eq(
        "a refreshToken in the mirror",
        oauth.get("refreshToken"),
        None,
    );
    let allowed = [
        "accessToken",
        "expiresAt",
        "scopes",
        "subscriptionType",
        "rateLimitTier",
    ];
    let extra: Vec<&String> = oauth
        .as_object()
        .expect("claudeAiOauth is an object")
        .keys()
        .filter(|k| !allowed.contains(&k.as_str()))
        .collect();
    check_eq("claudeAiOauth keys beyond the copy's five", extra, vec![]);
    check_eq(
        "the source's mcpOAuth in the mirror",
        doc.get("mcpOAuth"),
        None,
    );
    assert!(
        oauth["scopes"].is_array(),
        "the mirror carries no scopes (Claude Code needs them):\n{text}"
    );
    for r in refresh_tokens {
        assert!(
            !text.contains(r),
            "a refresh token of the source is in the mirror file"
        );
    }
    check_eq("the mirror file's mode", mode_of(&path), 0o600);
}

/// What Claude Code asked of the upstream (the requests that came through the proxy).
fn from_claude_code(up: &Upstream) -> Vec<Seen> {
    up.seen().into_iter().filter(Seen::by_claude_code).collect()
}

/// A run of `claude -p` succeeded with the upstream's answer, each of its messages requests
/// carrying `access`, and Claude Code sent no token request at all (so far).
#[track_caller]
fn check_answered_with(run: &Run, up: &Upstream, access: &str, since: usize) {
    let seen = from_claude_code(up);
    let ctx = || {
        format!(
            "{}\n--- Claude Code's requests ---\n{seen:#?}",
            run.context()
        )
    };
    assert_eq!(run.code, 0, "claude -p failed\n{}", ctx());
    assert!(
        run.stdout.contains(up.marker()),
        "claude -p did not print the upstream's answer ({})\n{}",
        up.marker(),
        ctx()
    );
    let messages: Vec<&Seen> = seen[since..].iter().filter(|s| s.is_messages()).collect();
    assert!(!messages.is_empty(), "no messages request\n{}", ctx());
    for m in &messages {
        assert!(
            m.bearer.as_deref() == Some(access) && m.status == 200,
            "a messages request without the mirror's current token, or refused\n{}",
            ctx()
        );
    }
    assert!(
        !seen.iter().any(Seen::is_token_request),
        "Claude Code sent a token request (it must never refresh an access-only login)\n{}",
        ctx()
    );
}

/// A source login in its own HOME (the host), the upstream that knows it, a consumer HOME with
/// a working directory for Claude Code, and the mirror directory (not created: claude-tokend
/// makes it, its parent exists).
struct Setup {
    host: TempHome,
    consumer: TempHome,
    login: Login,
    up: Upstream,
    mirror: PathBuf,
    work: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let host = TempHome::new();
        let login = Login::fresh();
        host.write_creds(&typical_doc(&login));
        let up = Upstream::start(&login.access, &login.refresh);
        let consumer = TempHome::new();
        let work = consumer.path().join("work");
        fs::create_dir(&work).expect("creating the consumer's working directory");
        let mirror = host.path().join("claude-mirror");
        Setup {
            host,
            consumer,
            login,
            up,
            mirror,
            work,
        }
    }

    /// claude-tokend against this host and upstream.
    fn tokend(&self) -> Cmd {
        Cmd::new(&self.host).env("CLAUDE_TOKEND_TOKEN_URL", self.up.token_url())
    }

    fn claude(&self, proxy: &Proxy) -> Run {
        let run = proxy.claude(
            self.consumer.path(),
            &self.mirror,
            &self.work,
            &["-p", "hi"],
        );
        say(&format!(
            "claude -p ran in {:.1} s",
            run.elapsed.as_secs_f64()
        ));
        run
    }
}

/// The daemon keeps the mirror; Claude Code runs on it, never refreshes; a refresh of the source
/// (by `claude-tokend refresh`, another process: the daemon follows whoever changed the source)
/// makes the upstream refuse the old token, and Claude Code runs again from the rewritten mirror.
#[test]
fn claude_code_runs_on_a_daemon_kept_mirror_and_again_after_the_source_is_refreshed() {
    let Some(tool) = tool_or_skip("claude_code_runs_on_a_daemon_kept_mirror") else {
        return;
    };
    let s = Setup::new();
    let proxy = Proxy::start(&tool, &s.up.base());
    let daemon = s.tokend().arg("--mirror").arg(&s.mirror).spawn();
    let first = s.login.access.clone();
    let written = wait_until(Duration::from_secs(10), || {
        mirrored_access(&s.mirror).as_deref() == Some(first.as_str()) || !is_running(&daemon)
    });
    if !written || !is_running(&daemon) {
        send_signal(&daemon, libc::SIGTERM);
        let out = daemon.wait();
        panic!(
            "the daemon did not write the mirror {} within 10 s, or exited\n{}",
            s.mirror.display(),
            out.context()
        );
    }
    check_access_only(&s.mirror, &first, &[&s.login.refresh]);

    let run = s.claude(&proxy);
    check_answered_with(&run, &s.up, &first, 0);

    // claude-tokend refreshes the source against the same upstream, which from then on
    // refuses the first access token.
    s.tokend().arg("refresh").run().expect_code(0);
    let second = s.up.access();
    assert_ne!(
        second, first,
        "the upstream did not rotate the access token"
    );
    let direct: Vec<Seen> =
        s.up.seen()
            .into_iter()
            .filter(|r| !r.by_claude_code())
            .collect();
    check_eq(
        "token requests claude-tokend sent (one refresh grant)",
        direct
            .iter()
            .map(|r| (r.path.as_str(), r.grant_type.as_deref()))
            .collect::<Vec<_>>(),
        vec![(upstream::TOKEN_PATH, Some("refresh_token"))],
    );

    // The control: a copy that nothing rewrites stops working (the upstream answers 401 and
    // Claude Code has no way to refresh it), so the next success is the mirror's doing.
    let stale = s.consumer.path().join("stale-copy");
    fs::create_dir(&stale).expect("creating the stale copy's directory");
    let mut stale_doc = typical_doc(&s.login);
    stale_doc["claudeAiOauth"]
        .as_object_mut()
        .expect("claudeAiOauth")
        .remove("refreshToken");
    write_creds_at(&stale.join(".credentials.json"), &stale_doc);
    let before = from_claude_code(&s.up).len();
    let refused = proxy.claude(s.consumer.path(), &stale, &s.work, &["-p", "hi"]);
    let seen = from_claude_code(&s.up);
    assert!(
        refused.code != 0
            && !refused.stdout.contains(s.up.marker())
            && seen[before..].iter().any(|r| r.is_messages()
                && r.status == 401
                && r.bearer.as_deref() == Some(first.as_str())),
        "Claude Code on the old token should be refused (401) and fail\n{}\n{seen:#?}",
        refused.context()
    );

    // The daemon saw the source change and rewrote the mirror (within 1 s, by the contract).
    let rewritten = wait_until(Duration::from_secs(5), || {
        mirrored_access(&s.mirror).as_deref() == Some(second.as_str())
    });
    if !rewritten {
        let out = stop(daemon);
        panic!(
            "the daemon did not rewrite the mirror after the refresh within 5 s\n{}",
            out.context()
        );
    }
    check_access_only(&s.mirror, &second, &[&s.login.refresh, &s.up.refresh()]);
    let since = from_claude_code(&s.up).len();
    let run = s.claude(&proxy);
    check_answered_with(&run, &s.up, &second, since);

    let out = stop(daemon);
    out.expect_no_secret(&[s.login.refresh.clone(), s.up.refresh()]);
}

/// Claude Code in the middle of a session: its first request is answered with a tool call only
/// after `claude-tokend refresh --mirror` refreshed the source and rewrote the mirror (the
/// upstream now refuses the token that request carried). The session goes on: its next request
/// carries the new token from the rewritten file. The mirror was first written by `--once
/// --mirror` on a fresh login (one-shot commands write their mirrors refreshed or not).
#[test]
fn claude_code_mid_session_picks_up_a_mirror_that_refresh_rewrote() {
    let Some(tool) = tool_or_skip("claude_code_mid_session_picks_up_a_mirror") else {
        return;
    };
    let s = Setup::new();
    let proxy = Proxy::start(&tool, &s.up.base());
    let once = s
        .tokend()
        .arg("--once")
        .arg("--mirror")
        .arg(&s.mirror)
        .run();
    once.expect_code(0);
    check_eq(
        "requests sent by --once on a fresh login",
        s.up.seen().len(),
        0,
    );
    let first = s.login.access.clone();
    check_access_only(&s.mirror, &first, &[&s.login.refresh]);

    // The file the tool call reads: any small file in the working directory.
    let file = s.work.join("notes.txt");
    fs::write(&file, "nothing to see\n").expect("writing the file the tool reads");
    let refresh = s.tokend().arg("refresh").arg("--mirror").arg(&s.mirror);
    let refreshed = std::sync::Arc::new(std::sync::Mutex::new(None));
    {
        let refreshed = std::sync::Arc::clone(&refreshed);
        s.up.tool_turn(file, move || {
            *refreshed.lock().unwrap() = Some(refresh.run());
        });
    }

    let run = s.claude(&proxy);
    let refresh_out = refreshed
        .lock()
        .unwrap()
        .take()
        .expect("the upstream's first turn ran the refresh");
    refresh_out.expect_code(0);
    let second = s.up.access();
    assert_ne!(
        second, first,
        "the upstream did not rotate the access token"
    );
    check_access_only(&s.mirror, &second, &[&s.login.refresh, &s.up.refresh()]);

    let seen = from_claude_code(&s.up);
    let ctx = format!(
        "{}\n--- Claude Code's requests ---\n{seen:#?}",
        run.context()
    );
    assert_eq!(run.code, 0, "the session failed\n{ctx}");
    assert!(
        run.stdout.contains(s.up.marker()),
        "the session did not print the upstream's final answer\n{ctx}"
    );
    let messages: Vec<&Seen> = seen.iter().filter(|r| r.is_messages()).collect();
    assert!(
        messages
            .first()
            .is_some_and(|m| m.bearer.as_deref() == Some(first.as_str()) && !m.tool_result),
        "the session's first request should carry the first token\n{ctx}"
    );
    let after: Vec<&&Seen> = messages.iter().filter(|m| m.tool_result).collect();
    assert!(
        after
            .last()
            .is_some_and(|m| m.bearer.as_deref() == Some(second.as_str()) && m.status == 200),
        "the session's tool-result turn should end with the rewritten mirror's token\n{ctx}"
    );
    let refusals = after.iter().filter(|m| m.status == 401).count();
    say(&format!(
        "mid-session: {} messages requests, {refusals} refused before Claude Code used the new token",
        messages.len()
    ));
    assert!(
        !seen.iter().any(Seen::is_token_request),
        "Claude Code sent a token request\n{ctx}"
    );
}
