//! What every doctor run promises: the JSON shape (`{"checks":[{login, check, result, detail,
//! fix}]}`, `fix` null exactly when ok, `login` null for the machine), one text line per check,
//! exit 0 with warnings, 1 when a check fails, 2 for a bad command line; and that it only
//! looks: no byte or mtime under HOME changes (no lock file made, no lock taken, no mirror
//! written), no token request is sent, no token is printed, however tempting the login's state.

use std::fs;
use std::time::SystemTime;

use claude_tokend_e2e::*;
use serde_json::{Value, json};

use super::support::*;

#[test]
fn json_lists_every_check_with_its_login_and_a_fix_only_when_not_ok() {
    let home = TempHome::new();
    home.write_creds(&Login::fresh().doc());
    let r = Report::run(doctor(&home, &["--json", "--offline"]));
    r.out.expect_code(0);
    let login = home.creds_path().display().to_string();
    r.out.check_eq(
        "the checks, in order",
        r.names(),
        [
            "shadowing",
            "claude-code-store",
            "store",
            "login",
            "locks",
            "keeper",
        ]
        .map(String::from)
        .to_vec(),
    );
    for c in &r.checks {
        let keys: Vec<&str> = c.as_object().unwrap().keys().map(String::as_str).collect();
        r.out.check_eq(
            "the keys of a check",
            keys,
            vec!["login", "check", "result", "detail", "fix"],
        );
        let machine =
            ["shadowing", "claude-code-store", "clock"].contains(&c["check"].as_str().unwrap());
        r.out.check_eq(
            format!("login of {c}"),
            c["login"].clone(),
            if machine { Value::Null } else { json!(login) },
        );
        r.out.check(
            c["detail"].as_str().is_some_and(|d| !d.is_empty()),
            format!("a detail says what it saw: {c}"),
        );
        r.out.check(
            (c["result"] == "ok") == c["fix"].is_null(),
            format!("fix is null exactly when ok: {c}"),
        );
    }
    // Nothing keeps it (no daemon, no service): a warning, and warnings exit 0.
    r.expect("keeper", "warn", "no claude-tokend");
    r.expect("store", "ok", &login);
}

#[test]
fn text_prints_one_line_per_check_and_a_failure_exits_1() {
    let home = TempHome::new();
    let json = Report::run(doctor(&home, &["--json", "--offline"]));
    json.out.expect_code(1);
    json.expect("store", "fail", "does not exist");
    let text = doctor(&home, &["--offline"]).run();
    text.expect_code(1);
    let lines: Vec<&str> = text.stdout.lines().collect();
    text.check_eq("one line per check", lines.len(), json.checks.len());
    for (line, c) in lines.iter().zip(&json.checks) {
        let result = c["result"].as_str().unwrap();
        let check = c["check"].as_str().unwrap();
        text.check(
            line.starts_with(result) && line.contains(&format!(" {check}: ")),
            format!("the line {line:?} starts with {result} and names {check}"),
        );
        text.check(
            line.contains(c["detail"].as_str().unwrap()),
            format!("the line {line:?} says what the check saw"),
        );
        if let Some(fix) = c["fix"].as_str() {
            text.check(
                line.ends_with(&format!("Fix: {fix}")),
                format!("the line {line:?} says what to do"),
            );
        }
    }
}

#[test]
fn several_logins_each_get_their_lines_and_a_bad_command_line_is_exit_2() {
    let home = TempHome::new();
    let (a, b) = (home.path().join("a"), home.path().join("b"));
    write_creds_at(&a.join(".credentials.json"), &Login::fresh().doc());
    write_creds_at(&b.join(".credentials.json"), &Login::expired().doc());
    let r = Report::run(doctor(
        &home,
        &[
            "--json",
            "--offline",
            "--config-dir",
            a.to_str().unwrap(),
            "--config-dir",
            b.to_str().unwrap(),
        ],
    ));
    r.out.expect_code(0);
    for dir in [&a, &b] {
        let id = dir.join(".credentials.json").display().to_string();
        let mine: Vec<&str> = r
            .checks
            .iter()
            .filter(|c| c["login"] == id.as_str())
            .map(|c| c["check"].as_str().unwrap())
            .collect();
        r.out.check_eq(
            format!("the checks of {id}"),
            mine,
            vec!["store", "login", "locks", "keeper"],
        );
    }
    let expired = r
        .checks
        .iter()
        .find(|c| c["check"] == "login" && c["login"].as_str().unwrap().contains("/b/"))
        .unwrap();
    r.out.check_eq(
        "the expired login",
        expired["result"].clone(),
        json!("warn"),
    );
    let text = doctor(
        &home,
        &[
            "--offline",
            "--config-dir",
            a.to_str().unwrap(),
            "--config-dir",
            b.to_str().unwrap(),
        ],
    )
    .run();
    text.check(
        text.stdout.contains(&format!(
            " login ({}): ",
            b.join(".credentials.json").display()
        )),
        "with several logins each line names its login",
    );
    doctor(&home, &["--bogus"]).run().expect_code(2);
    // A --mirror before any login flag with two logins is not clear: as for every command.
    doctor(
        &home,
        &[
            "--mirror",
            home.path().join("m").to_str().unwrap(),
            "--config-dir",
            a.to_str().unwrap(),
            "--config-dir",
            b.to_str().unwrap(),
        ],
    )
    .run()
    .expect_code(2);
    doctor(&home, &[])
        .env("CLAUDE_TOKEND_TOKEN_URL", "http://example.com/token")
        .run()
        .expect_code(2);
}

/// The promise that matters most: doctor looks and touches nothing. A login that is due (and
/// one expired, whose refresh would be tempting), a stale mirror, a stale Claude Code lock and
/// no lock file of ours yet: after text and JSON runs, online and offline, every byte, mode,
/// inode and mtime under HOME is as it was, no lock file exists, the server saw nothing but the
/// clock probe's HEAD, and no token appears in any output, whole or in pieces.
#[test]
fn doctor_changes_nothing_sends_no_token_request_and_prints_no_token() {
    let home = TempHome::new();
    let login = Login::expired();
    home.write_creds(&login.doc());
    let other = home.path().join("other");
    let due = Login::due();
    write_creds_at(&other.join(".credentials.json"), &due.doc());
    let mirror = home.path().join("mirror");
    fs::create_dir(&mirror).unwrap();
    let stale = Login::fresh();
    write_creds_at(
        &mirror.join(".credentials.json"),
        &json!({"claudeAiOauth": {"accessToken": stale.access, "expiresAt": stale.expires_at}}),
    );
    abandoned_lock(&home.claude_dir().join(".oauth_refresh.lock"), 600);
    let server = TokenServer::for_login(&login);
    server.accept_refresh(&due.refresh);
    let before = everything(home.path());
    let mut secrets = login.secrets();
    secrets.extend(due.secrets());
    secrets.push(stale.access.clone());
    let args = [
        "--config-dir",
        home.claude_dir().to_str().unwrap(),
        "--mirror",
        mirror.to_str().unwrap(),
        "--config-dir",
        other.to_str().unwrap(),
    ]
    .map(String::from);
    let mut online = 0;
    for (json, offline) in [(false, false), (true, false), (false, true), (true, true)] {
        let mut argv: Vec<&str> = args.iter().map(String::as_str).collect();
        if json {
            argv.push("--json");
        }
        if offline {
            argv.push("--offline");
        } else {
            online += 1;
            server.push(Reply::raw(200, "").header("Date", &http_date(SystemTime::now())));
        }
        let out = doctor(&home, &argv).server(&server).run();
        out.expect_no_secret(&secrets);
        for token in &secrets {
            out.expect_masked(token);
        }
        out.check(
            out.stdout.contains("mirror") && out.stdout.contains("lock"),
            "it did look at the mirror and the lock",
        );
    }
    let after = everything(home.path());
    let changed: Vec<String> = before
        .iter()
        .filter(|(p, b)| after.get(*p) != Some(b))
        .map(|(p, b)| format!("{}: {b}\n  now {:?}", p.display(), after.get(p)))
        .chain(
            after
                .keys()
                .filter(|p| !before.contains_key(*p))
                .map(|p| format!("new: {}", p.display())),
        )
        .collect();
    check_eq("what changed under HOME", changed, Vec::<String>::new());
    let requests: Vec<String> = server
        .requests()
        .iter()
        .map(|r| format!("{} {} {:?}", r.method, r.path, r.raw_body))
        .collect();
    check_eq(
        "what the server saw (the clock probe alone)",
        requests,
        vec![format!("HEAD / {:?}", ""); online],
    );
}
