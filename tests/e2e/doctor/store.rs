//! `store` (missing, malformed, another user's, in a directory you cannot write in: fail; not
//! 0600: warn) and `login` (blanked or ended: fail; no refresh token, ending within 3 days,
//! access token expired, refused by the server: warn, a refused or ended login never told to
//! refresh), each against a healthy one.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use claude_tokend_e2e::*;
use serde_json::{Value, json};

use super::support::*;

fn report(home: &TempHome) -> Report {
    Report::run(doctor(home, &["--json", "--offline"]))
}

#[test]
fn a_missing_or_malformed_store_fails_and_is_left_as_it_is() {
    let home = TempHome::new();
    let r = report(&home);
    r.out.expect_code(1);
    r.expect("store", "fail", "does not exist");
    r.out
        .check(r.fix("store").contains("/login"), "it says to sign in");
    // The contract leaves checks out only for --offline: the login line is there, saying it
    // cannot be judged.
    r.expect("login", "warn", "cannot be judged");
    home.write_raw(b"{\"claudeAiOauth\": {\"accessToken\": ");
    let before = home.state();
    let r = report(&home);
    r.out
        .expect_code(1)
        .expect_untouched(&home.creds_path(), &before);
    r.expect("store", "fail", "not a usable credentials document");
}

#[test]
fn a_store_readable_by_others_is_a_warning() {
    let home = TempHome::new();
    home.write_creds(&Login::fresh().doc());
    fs::set_permissions(home.creds_path(), fs::Permissions::from_mode(0o644)).unwrap();
    let r = report(&home);
    r.out.expect_code(0);
    r.expect("store", "warn", "mode 0644");
    r.out.check_eq(
        "the fix",
        r.fix("store"),
        format!("chmod 600 {}", home.creds_path().display()),
    );
    r.out
        .check_eq("the mode, untouched", mode_of(&home.creds_path()), 0o644);
    fs::set_permissions(home.creds_path(), fs::Permissions::from_mode(0o600)).unwrap();
    report(&home).expect("store", "ok", "mode 0600");
}

const NOBODY: u32 = 65534;

/// A file left by `sudo claude` belongs to root: as root the test plays it the other way round
/// (the file given to `nobody`, doctor run as root). Only root can give a file away.
#[test]
fn a_store_belonging_to_another_user_fails() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: only root can make a file another user's (not running as root)");
        return;
    }
    let home = TempHome::new();
    home.write_creds(&Login::fresh().doc());
    std::os::unix::fs::chown(home.creds_path(), Some(NOBODY), Some(NOBODY)).unwrap();
    let r = report(&home);
    r.out.expect_code(1);
    r.expect("store", "fail", "uid 65534");
    // Root's own login: the file is not handed to root, which would give a user's file away.
    r.out.check(
        !r.fix("store").contains("chown") && r.fix("store").contains("run claude-tokend as"),
        "it says what to do without a chown to root",
    );
}

/// A directory no refresh can write in: a normal user takes its write bit away; root, whom
/// modes do not stop, makes it immutable (or says why it cannot here).
#[test]
fn a_store_in_a_directory_you_cannot_write_in_fails() {
    let home = TempHome::new();
    home.write_creds(&Login::fresh().doc());
    let dir = home.claude_dir();
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        if let Err(e) = set_immutable(&dir, true) {
            eprintln!(
                "skipped: running as root, and {} cannot be made immutable ({e})",
                dir.display()
            );
            return;
        }
    } else {
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o500)).unwrap();
    }
    let r = report(&home);
    if root {
        set_immutable(&dir, false).unwrap();
    }
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
    r.out.expect_code(1);
    r.expect(
        "store",
        "fail",
        &format!("you cannot write in {}", dir.display()),
    );
    report(&home).expect("store", "ok", "a directory you can write in");
}

/// A login document with `oauth`'s fields replaced.
fn with(login: &Login, change: Value) -> Value {
    let mut doc = login.doc();
    for (k, v) in change.as_object().unwrap() {
        if v.is_null() {
            doc["claudeAiOauth"].as_object_mut().unwrap().remove(k);
        } else {
            doc["claudeAiOauth"][k] = v.clone();
        }
    }
    doc
}

#[test]
fn the_login_by_its_state() {
    let home = TempHome::new();
    let login = Login::fresh();
    let day = 86_400_000i64;
    let cases: Vec<(&str, Value, i32, &str, &str)> = vec![
        (
            "healthy",
            json!({"refreshTokenExpiresAt": now_ms() + 20 * day}),
            0,
            "ok",
            "signed in",
        ),
        (
            "blanked",
            json!({"accessToken": "", "refreshToken": "", "expiresAt": 0}),
            1,
            "fail",
            "blank",
        ),
        (
            "ended",
            json!({"refreshTokenExpiresAt": now_ms() - day}),
            1,
            "fail",
            "the login ended",
        ),
        (
            "ending",
            json!({"refreshTokenExpiresAt": now_ms() + 2 * day}),
            0,
            "warn",
            "the login itself ends",
        ),
        (
            "access-only",
            json!({"refreshToken": null}),
            0,
            "warn",
            "no refresh token",
        ),
        (
            "expired",
            json!({"expiresAt": now_ms() - 3_600_000}),
            0,
            "warn",
            "the access token expired",
        ),
    ];
    for (what, change, code, result, needle) in cases {
        home.write_creds(&with(&login, change));
        let r = report(&home);
        r.out.expect_code(code);
        let c = r.expect("login", result, needle);
        r.out.check(
            (result == "ok") == c["fix"].is_null(),
            format!("{what}: a fix unless ok"),
        );
        r.out.expect_no_secret(&login.secrets());
    }
    // No claudeAiOauth at all: nobody is signed in.
    home.write_creds(&json!({"mcpOAuth": {}}));
    report(&home).expect("login", "fail", "no claudeAiOauth");
}

#[test]
fn a_refresh_token_the_server_refused_is_never_told_to_refresh_until_a_new_login() {
    let home = TempHome::new();
    let login = Login::fresh();
    home.write_creds(&login.doc());
    // What `--once` leaves after an invalid_grant: the refusal, by fingerprint, in our lock file.
    let server = TokenServer::start();
    server.always(Reply::invalid_grant());
    Cmd::new(&home)
        .server(&server)
        .arg("refresh")
        .run()
        .expect_code(77);
    let lock = home.claude_dir().join(".credentials.json.lock");
    assert!(
        fs::read_to_string(&lock).unwrap().contains("refused"),
        "the refusal is recorded"
    );
    let r = report(&home);
    // A warning, as CONTRACT.md's table has it, but told as the lost login it is.
    r.out.expect_code(0);
    r.expect("login", "warn", "refused this login's refresh token");
    r.expect("login", "warn", "lost");
    r.out.check(
        !r.fix("login").contains("claude-tokend refresh"),
        "a refused login is lost: no refresh is suggested",
    );
    // Its access token expired since: still lost, still no refresh suggested.
    let hour_ago = now_ms() - 3_600_000;
    home.write_creds(&with(&login, json!({"expiresAt": hour_ago})));
    let r = report(&home);
    r.expect("login", "warn", "refused");
    r.out.check(
        !r.fix("login").contains("claude-tokend refresh"),
        format!("no refresh suggested for a lost login: {}", r.fix("login")),
    );
    // A new login (another refresh token) is not held back by the old refusal.
    home.write_creds(&Login::fresh().doc());
    report(&home).expect("login", "ok", "signed in");
}
