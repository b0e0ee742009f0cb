//! Several logins, one daemon (CONTRACT.md "Several logins, one daemon"): `--config-dir` and
//! `--credentials` repeated, `CLAUDE_TOKEND_CONFIG_DIRS`, each login with its own store, locks,
//! schedule and state; `--once`, `refresh` and `status` over all of them with the worst exit
//! code; `token`, `login` and `logout` on exactly one; one daemon keeping them all fresh, where a
//! dead or blocked login never delays another.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use claude_tokend_e2e::*;
use serde_json::{Value, json};

const SOON: Duration = Duration::from_secs(15);

/// A config directory `name` under the home, holding `login` (when given).
fn config_dir(home: &TempHome, name: &str, login: Option<&Login>) -> PathBuf {
    let dir = home.path().join(name);
    std::fs::create_dir_all(&dir).expect("mkdir config dir");
    if let Some(login) = login {
        write_creds_at(&dir.join(".credentials.json"), &login.doc());
    }
    dir
}

fn access_in(dir: &Path) -> Value {
    read_json(&dir.join(".credentials.json"))["claudeAiOauth"]["accessToken"].clone()
}

/// True once the file in `dir` holds an access token the server issued (not `old`'s).
fn renewed(server: &TokenServer, dir: &Path, old: &Login) -> bool {
    let now = access_in(dir);
    now != json!(old.access) && server.issued().iter().any(|i| now == json!(i.access))
}

/// Requests that carried `refresh_token`.
fn sent_with(server: &TokenServer, refresh_token: &str) -> usize {
    server
        .requests()
        .iter()
        .filter(|r| r.refresh_token() == Some(refresh_token))
        .count()
}

#[test]
fn once_refreshes_every_due_login_named_by_flags() {
    let home = TempHome::new();
    let (a, b, c) = (Login::due(), Login::due(), Login::fresh());
    let server = TokenServer::for_login(&a);
    server.accept_refresh(&b.refresh);
    let work = config_dir(&home, "work", Some(&a));
    let personal = config_dir(&home, "personal", Some(&b));
    let other = home.path().join("other.json");
    write_creds_at(&other, &c.doc());
    let out = Cmd::new(&home)
        .server(&server)
        .arg("--once")
        .arg("--config-dir")
        .arg(&work)
        .arg("--credentials")
        .arg(&other)
        .arg("--config-dir")
        .arg(&personal)
        .run();
    out.expect_code(0)
        .expect_silent()
        .check_eq("requests sent", server.count(), 2)
        .check_eq("work refreshed", sent_with(&server, &a.refresh), 1)
        .check_eq("personal refreshed", sent_with(&server, &b.refresh), 1)
        .check_eq("the fresh file is left alone", read_json(&other), c.doc());
    out.check(renewed(&server, &work, &a), "work holds its new token")
        .check(
            renewed(&server, &personal, &b),
            "personal holds its new token",
        );
    // The default login (HOME/.claude) is not among them when flags name logins.
    out.check(!home.creds_path().exists(), "no default login was touched");
}

#[test]
fn the_exit_code_is_the_worst_and_a_dead_login_does_not_stop_the_others() {
    let home = TempHome::new();
    let (good, dead) = (Login::due(), Login::due());
    // The server knows only `good`'s refresh token: `dead`'s gets invalid_grant.
    let server = TokenServer::for_login(&good);
    let g = config_dir(&home, "good", Some(&good));
    let d = config_dir(&home, "dead", Some(&dead));
    let out = Cmd::new(&home)
        .server(&server)
        .args(["--once", "--config-dir"])
        .arg(&d)
        .arg("--config-dir")
        .arg(&g)
        .run();
    out.expect_code(77)
        .check_eq(
            "the good login was refreshed",
            sent_with(&server, &good.refresh),
            1,
        )
        .check_eq(
            "the dead one was tried once",
            sent_with(&server, &dead.refresh),
            1,
        )
        .expect_stderr_contains("login");
    // A missing store (78) is worse than a refused grant (77).
    let missing = config_dir(&home, "missing", None);
    let out = Cmd::new(&home)
        .server(&server)
        .args(["--once", "--config-dir"])
        .arg(&d)
        .arg("--config-dir")
        .arg(&missing)
        .run();
    out.expect_code(78);
}

#[test]
fn config_dirs_variable_names_the_logins_and_flags_win_over_it() {
    let home = TempHome::new();
    let (a, b) = (Login::due(), Login::due());
    let server = TokenServer::for_login(&a);
    server.accept_refresh(&b.refresh);
    let one = config_dir(&home, "one", Some(&a));
    let two = config_dir(&home, "two", Some(&b));
    let list = format!("{}::{}", one.display(), two.display());
    // A flag names exactly its login; the list is not used.
    Cmd::new(&home)
        .server(&server)
        .env("CLAUDE_TOKEND_CONFIG_DIRS", &list)
        .args(["--once", "--config-dir"])
        .arg(&two)
        .run()
        .expect_code(0)
        .check_eq("only the flag's login", sent_with(&server, &a.refresh), 0);
    // Without flags the list is every login (an empty entry is skipped).
    Cmd::new(&home)
        .server(&server)
        .env("CLAUDE_TOKEND_CONFIG_DIRS", &list)
        .arg("--once")
        .run()
        .expect_code(0)
        .check_eq(
            "the list's first login too",
            sent_with(&server, &a.refresh),
            1,
        );
}

#[test]
fn the_same_store_named_twice_is_one_login() {
    let home = TempHome::new();
    let a = Login::due();
    let server = TokenServer::for_login(&a);
    server.set_delay(Duration::from_millis(200));
    let dir = config_dir(&home, "work", Some(&a));
    Cmd::new(&home)
        .server(&server)
        .args(["--once", "--config-dir"])
        .arg(&dir)
        .arg("--credentials")
        .arg(dir.join(".credentials.json"))
        .arg("--config-dir")
        .arg(dir.join("."))
        .run()
        .expect_code(0)
        .check_eq("requests sent", server.count(), 1);
}

#[test]
fn status_json_is_an_array_for_several_logins_and_an_object_for_one() {
    let home = TempHome::new();
    let (a, b) = (Login::fresh(), Login::fresh());
    let server = TokenServer::start();
    let one = config_dir(&home, "one", Some(&a));
    let two = config_dir(&home, "two", Some(&b));
    let out = Cmd::new(&home)
        .server(&server)
        .args(["status", "--json", "--config-dir"])
        .arg(&one)
        .arg("--config-dir")
        .arg(&two)
        .run();
    out.expect_code(0)
        .expect_no_secret(&[a.access.clone(), b.access.clone()]);
    let v: Value = serde_json::from_str(&out.stdout).expect("JSON");
    let arr = v
        .as_array()
        .unwrap_or_else(|| panic!("an array\n{}", out.context()));
    out.check_eq("two objects", arr.len(), 2);
    for (obj, dir) in arr.iter().zip([&one, &two]) {
        out.check_eq("store", &obj["store"], &json!("file"))
            .check_eq(
                "configDir",
                &obj["configDir"],
                &json!(dir.display().to_string()),
            )
            .check_eq(
                "path",
                &obj["path"],
                &json!(dir.join(".credentials.json").display().to_string()),
            )
            .check_eq("loggedIn", &obj["loggedIn"], &json!(true));
    }
    let out = Cmd::new(&home)
        .server(&server)
        .args(["status", "--json", "--config-dir"])
        .arg(&one)
        .run();
    let v: Value = serde_json::from_str(&out.stdout).expect("JSON");
    out.expect_code(0)
        .check(v.is_object(), "one login: an object")
        .check_eq("store", &v["store"], &json!("file"));
}

#[test]
fn token_login_and_logout_need_exactly_one_login() {
    let home = TempHome::new();
    let (a, b) = (Login::fresh(), Login::fresh());
    let server = TokenServer::start();
    let one = config_dir(&home, "one", Some(&a));
    let two = config_dir(&home, "two", Some(&b));
    for cmd in [
        &["token"][..],
        &["logout", "--yes"],
        &["login", "--no-browser"],
    ] {
        let out = Cmd::new(&home)
            .server(&server)
            .args(cmd)
            .arg("--config-dir")
            .arg(&one)
            .arg("--config-dir")
            .arg(&two)
            .run();
        out.expect_code(2)
            .expect_stderr_contains("--config-dir")
            .check_eq("stdout", out.stdout.as_str(), "");
    }
    let out = Cmd::new(&home)
        .server(&server)
        .arg("token")
        .arg("--config-dir")
        .arg(&two)
        .run();
    out.expect_code(0)
        .check_eq("stdout", out.stdout.as_str(), &format!("{}\n", b.access));
    // Both files are as they were.
    assert_eq!(read_json(&one.join(".credentials.json")), a.doc());
}

/// The daemon on three logins against one endpoint: due at different times, one dead among
/// them. Each is refreshed when due, the dead one is tried once and left alone.
#[test]
fn one_daemon_keeps_several_logins_fresh_and_a_dead_one_does_not_hold_them_back() {
    let home = TempHome::new();
    let now_due = Login::expiring_in(10);
    let later = Login::expiring_in(10 + 4);
    let dead = Login::expiring_in(10);
    let server = TokenServer::for_login(&now_due);
    server.accept_refresh(&later.refresh);
    let a = config_dir(&home, "a", Some(&now_due));
    let b = config_dir(&home, "b", Some(&later));
    let c = config_dir(&home, "c", Some(&dead));
    let started = Instant::now();
    let daemon = Cmd::new(&home)
        .server(&server)
        .args(["--refresh-before", "10s"])
        .arg("--config-dir")
        .arg(&c)
        .arg("--config-dir")
        .arg(&a)
        .arg("--config-dir")
        .arg(&b)
        .timeout(Duration::from_secs(120))
        .spawn();
    assert!(
        wait_until(SOON, || sent_with(&server, &now_due.refresh) == 1
            && sent_with(&server, &later.refresh) == 1),
        "both live logins refreshed; requests: {}",
        server.count()
    );
    let both = started.elapsed();
    assert!(wait_until(SOON, || renewed(&server, &b, &later)), "b saved");
    std::thread::sleep(Duration::from_secs(2));
    let out = stop(daemon);
    out.check_eq(
        "the dead login was tried once",
        sent_with(&server, &dead.refresh),
        1,
    )
    .check(
        both >= Duration::from_secs(3),
        format!("the later login waited for its due time ({both:?})"),
    )
    .check(renewed(&server, &a, &now_due), "a saved")
    .check_eq(
        "the dead login's file is untouched",
        read_json(&c.join(".credentials.json")),
        dead.doc(),
    )
    .expect_no_secret(&now_due.secrets());
}

/// A login waiting for a live Claude Code lock (its own config dir's) does not delay another.
#[test]
fn a_login_waiting_for_a_held_lock_does_not_delay_another() {
    let home = TempHome::new();
    let (blocked, free) = (Login::expiring_in(5), Login::expiring_in(5));
    let server = TokenServer::for_login(&blocked);
    server.accept_refresh(&free.refresh);
    let a = config_dir(&home, "blocked", Some(&blocked));
    let b = config_dir(&home, "free", Some(&free));
    let lock = LiveLock::hold(&a.join(".oauth_refresh.lock"));
    let daemon = Cmd::new(&home)
        .server(&server)
        .args(["--refresh-before", "10s"])
        .arg("--config-dir")
        .arg(&a)
        .arg("--config-dir")
        .arg(&b)
        .timeout(Duration::from_secs(120))
        .spawn();
    assert!(
        wait_until(SOON, || sent_with(&server, &free.refresh) == 1),
        "the free login is refreshed while the other waits"
    );
    assert_eq!(
        sent_with(&server, &blocked.refresh),
        0,
        "nothing sent for the login whose lock is held"
    );
    lock.release();
    assert!(
        wait_until(SOON, || sent_with(&server, &blocked.refresh) == 1),
        "the blocked login is refreshed once its lock is released"
    );
    stop(daemon);
}
