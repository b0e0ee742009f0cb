//! `mirrors` (given the same `--mirror` flags or `CLAUDE_TOKEND_MIRRORS`): ok when each mirror
//! holds the source's current access token; a warning for one that holds an older token, none
//! yet, a login of its own (a refresh token), or something that is not a mirror file. Doctor
//! reads the mirror the careful way (a link is not followed) and writes nothing there.

use std::fs;

use claude_tokend_e2e::*;
use serde_json::json;

use super::support::*;

#[test]
fn a_mirror_is_ok_only_while_it_holds_the_sources_current_access_token() {
    let home = TempHome::new();
    let login = Login::fresh();
    home.write_creds(&login.doc());
    let dir = home.path().join("mirror");
    let mirror = mirror_path(&dir);
    let run = || {
        Report::run(doctor(
            &home,
            &["--json", "--offline", "--mirror", dir.to_str().unwrap()],
        ))
    };
    let d = dir.display().to_string();
    // Not there yet: the daemon would write it.
    run().expect(
        "mirrors",
        "warn",
        &format!("the mirror {d} has no .credentials.json"),
    );
    fs::create_dir(&dir).unwrap();
    write_creds_at(&mirror, &expected_mirror(&login.doc(), &consumer_keys()));
    let r = run();
    r.out.expect_code(0);
    r.expect("mirrors", "ok", &d);
    // Without the flag, no mirror is known, and no line is printed about mirrors.
    let r = Report::run(doctor(&home, &["--json", "--offline"]));
    r.out.check(
        !r.names().contains(&"mirrors".to_owned()),
        "no mirrors line",
    );
    // The variable names the single login's mirrors as the flag does.
    let r = Report::run(doctor(&home, &["--json", "--offline"]).env("CLAUDE_TOKEND_MIRRORS", &dir));
    r.expect("mirrors", "ok", &d);
    // The source moved on (Claude Code refreshed it): the mirror holds an older token.
    let newer = Login::fresh();
    home.write_creds(&newer.doc());
    let before = everything(home.path());
    let r = run();
    r.expect(
        "mirrors",
        "warn",
        "does not hold the source's current access token",
    );
    r.out.check(
        r.fix("mirrors").contains("--once"),
        "it says how to write it now",
    );
    r.out
        .expect_no_secret(&[login.access.clone(), newer.access.clone()]);
    r.out
        .check_eq("nothing written", everything(home.path()), before);
    // Someone signed in inside the mirror: a login of its own, never overwritten.
    write_creds_at(&mirror, &Login::fresh().doc());
    run().expect("mirrors", "warn", "holds a login with a refresh token");
    // A link planted by the consumer is not followed (and points at the source here).
    fs::remove_file(&mirror).unwrap();
    std::os::unix::fs::symlink(home.creds_path(), &mirror).unwrap();
    run().expect("mirrors", "warn", "a symlink");
    // Logged out at the source: a mirror without a login is what it should be.
    fs::remove_file(&mirror).unwrap();
    home.write_creds(&json!({"mcpOAuth": {}}));
    write_creds_at(&mirror, &consumer_keys());
    run().expect("mirrors", "ok", &d);
}
