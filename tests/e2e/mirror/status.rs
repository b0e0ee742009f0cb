//! `status` reports each login's mirrors when given the same flags or variable: the text names
//! each mirror's directory under its login; `status --json` has `"mirrors": [{"path",
//! "lastWritten"}]` per login (always there, empty without mirrors), `lastWritten` null before
//! the first write and the mirror file's modification time (RFC 3339) after it.

use std::path::{Path, PathBuf};

use claude_tokend_e2e::*;
use serde_json::{Value, json};

fn status_json(home: &TempHome, args: &[&str]) -> (Out, Value) {
    let out = Cmd::new(home).args(["status", "--json"]).args(args).run();
    let v: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("status --json is not JSON ({e})\n{}", out.context()));
    (out, v)
}

fn s(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

/// Seconds since the epoch of an RFC 3339 time, as `date` reads it (None if it cannot).
fn epoch_of(rfc3339: &str) -> Option<i64> {
    let looks_right = rfc3339.len() >= 20
        && rfc3339.as_bytes()[4] == b'-'
        && rfc3339.as_bytes()[10] == b'T'
        && (rfc3339.ends_with('Z') || rfc3339[19..].contains(['+', '-']));
    if !looks_right {
        return None;
    }
    let out = std::process::Command::new("date")
        .args(["-u", "-d", rfc3339, "+%s"])
        .output()
        .ok()?;
    String::from_utf8(out.stdout).ok()?.trim().parse().ok()
}

fn mtime_secs(path: &Path) -> i64 {
    std::fs::metadata(path)
        .unwrap()
        .modified()
        .unwrap()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[test]
fn status_json_has_an_empty_mirrors_list_without_mirrors() {
    let home = TempHome::new();
    home.write_creds(&Login::fresh().doc());
    let (out, v) = status_json(&home, &[]);
    out.expect_code(0)
        .check_eq("mirrors", v.get("mirrors").cloned(), Some(json!([])));
}

#[test]
fn status_json_says_when_each_mirror_was_last_written() {
    let home = TempHome::new();
    let login = Login::fresh();
    home.write_creds(&login.doc());
    let dir = home.path().join("mirror");
    // A relative DIR is made absolute.
    let (out, v) = {
        let out = Cmd::new(&home)
            .current_dir(home.path())
            .args(["status", "--json", "--mirror", "mirror"])
            .run();
        let v: Value = serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("status --json is not JSON ({e})\n{}", out.context()));
        (out, v)
    };
    out.expect_code(0).check_eq(
        "before the first write",
        v["mirrors"].clone(),
        json!([{"path": s(&dir), "lastWritten": null}]),
    );
    out.check(!dir.exists(), "status wrote no mirror");

    let server = TokenServer::for_login(&login);
    Cmd::new(&home)
        .server(&server)
        .args(["--once", "--mirror", s(&dir)])
        .run()
        .expect_code(0);
    let (out, v) = status_json(&home, &["--mirror", s(&dir)]);
    out.expect_code(0);
    let mirrors = v["mirrors"].as_array().cloned().unwrap_or_default();
    out.check_eq("one mirror", mirrors.len(), 1).check_eq(
        "its path",
        mirrors[0]["path"].clone(),
        json!(s(&dir)),
    );
    let when = mirrors[0]["lastWritten"].as_str().unwrap_or_default();
    let secs = epoch_of(when);
    let mtime = mtime_secs(&mirror_path(&dir));
    out.check(
        secs.is_some_and(|t| (t - mtime).abs() <= 1),
        format!("lastWritten {when:?} is the file's mtime ({mtime}) in RFC 3339"),
    )
    .expect_no_secret(&login.secrets());
}

#[test]
fn status_lists_each_mirror_under_its_login() {
    let home = TempHome::new();
    let (la, lb) = (Login::fresh(), Login::fresh());
    let config = |name: &str, login: &Login| -> PathBuf {
        let dir = home.path().join(name);
        write_creds_at(&dir.join(".credentials.json"), &login.doc());
        dir
    };
    let (a, b) = (config("a", &la), config("b", &lb));
    let (ma1, ma2, mb) = (
        home.path().join("mirror-a1"),
        home.path().join("mirror-a2"),
        home.path().join("mirror-b"),
    );
    let args = [
        "--config-dir",
        s(&a),
        "--mirror",
        s(&ma1),
        "--mirror",
        s(&ma2),
        "--config-dir",
        s(&b),
        "--mirror",
        s(&mb),
    ];
    let out = Cmd::new(&home).arg("status").args(args).run();
    out.expect_code(0);
    let at = |p: &Path| out.stdout.find(&format!("{}", p.display()));
    let order = [
        at(&a.join(".credentials.json")),
        at(&ma1),
        at(&ma2),
        at(&b.join(".credentials.json")),
        at(&mb),
    ];
    out.check(
        order.iter().all(Option::is_some) && order.windows(2).all(|w| w[0] < w[1]),
        format!("each mirror named under its login, in order: {order:?}"),
    );

    let (out, v) = status_json(&home, &args);
    out.expect_code(0);
    let logins = v.as_array().cloned().unwrap_or_default();
    out.check_eq("two logins", logins.len(), 2)
        .check_eq(
            "a's mirrors",
            logins[0]["mirrors"].clone(),
            json!([{"path": s(&ma1), "lastWritten": null},
                   {"path": s(&ma2), "lastWritten": null}]),
        )
        .check_eq(
            "b's mirrors",
            logins[1]["mirrors"].clone(),
            json!([{"path": s(&mb), "lastWritten": null}]),
        )
        .check(
            !ma1.exists() && !ma2.exists() && !mb.exists(),
            "status wrote no mirror",
        );

    // The variable, for the single login.
    let out = Cmd::new(&home)
        .env(
            "CLAUDE_TOKEND_MIRRORS",
            format!("{}:{}", ma1.display(), mb.display()),
        )
        .args(["status", "--config-dir", s(&a)])
        .run();
    out.expect_code(0).check(
        out.stdout.contains(s(&ma1)) && out.stdout.contains(s(&mb)),
        "the variable's mirrors are listed",
    );
}
