//! The daemon's mirror follows its source: written at start, within a second of every change of
//! the source's access token (the daemon's own refresh, or someone else's write), emptied of
//! `claudeAiOauth` when the source has no access token, rewritten when a consumer spoiled or
//! removed it (on SIGHUP, or the periodic check shortened by
//! `CLAUDE_TOKEND_TEST_MIRROR_CHECK_MS`), and left alone by a refused refresh. The consumer's
//! own keys always survive; nothing of the source but the copied keys ever gets in.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use claude_tokend_e2e::*;
use serde_json::{Value, json};

/// Generous bound for what must happen "soon": CI machines are shared and slow.
const SOON: Duration = Duration::from_secs(8);

/// The contract's "within 1 s" of a change of the source's access token, with slack for a
/// loaded machine. The periodic check runs once a minute, so a mirror that only caught up
/// through it would still miss this by far.
const FOLLOW: Duration = Duration::from_millis(2500);

/// The daemon with a 10 s lead (so a login can be made due within seconds) and `--mirror dir`.
fn daemon(home: &TempHome, server: &TokenServer, dir: &Path) -> Cmd {
    Cmd::new(home)
        .server(server)
        .args(["--refresh-before", "10s", "--mirror"])
        .arg(dir)
        .timeout(Duration::from_secs(60))
}

/// A mirror directory the consumer made (`HOME/mnt/claude`), holding its own keys.
fn consumer_dir(home: &TempHome) -> PathBuf {
    let dir = home.path().join("mnt").join("claude");
    fs::create_dir_all(&dir).expect("mkdir the mirror directory");
    write_creds_at(&mirror_path(&dir), &consumer_keys());
    dir
}

/// Waits for the mirror to match the source; fails with the mismatch and the daemon's output.
#[track_caller]
fn expect_follows(d: Running, home: &TempHome, dir: &Path, limit: Duration, what: &str) -> Running {
    if let Err(why) = wait_for_mirror(dir, &home.creds_path(), &consumer_keys(), limit) {
        let out = stop(d);
        panic!("{what}: {why}\n{}", out.context());
    }
    d
}

fn source_access(home: &TempHome) -> String {
    home.read_creds()["claudeAiOauth"]["accessToken"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn the_daemon_writes_an_access_only_copy_at_start_keeping_the_consumers_keys() {
    let home = TempHome::new();
    let login = Login::fresh();
    home.write_creds(&login.doc());
    let server = TokenServer::for_login(&login);
    let dir = consumer_dir(&home);
    let before = home.state();
    // Under umask 0 a careless create would leave the file world-readable.
    let d = daemon(&home, &server, &dir).umask(0).spawn();
    let d = expect_follows(d, &home, &dir, SOON, "written at start");
    let text = fs::read_to_string(mirror_path(&dir)).expect("read the mirror");
    let out = stop(d);
    out.check(
        !text.contains(&login.refresh) && !text.contains("refreshToken"),
        format!("no refresh token in the mirror:\n{text}"),
    )
    .check(
        !text.contains("mcp-access-not-ours") && !text.contains("unknownTopLevel"),
        format!("none of the source's other keys in the mirror:\n{text}"),
    )
    .check_eq("requests", server.count(), 0)
    .expect_untouched(&home.creds_path(), &before)
    .expect_only_files(&dir, &[".credentials.json".to_owned()])
    .expect_no_secret(&login.secrets());
}

#[test]
fn the_mirror_follows_the_daemons_own_refresh_within_a_second() {
    let home = TempHome::new();
    // Due 2 s after start under the 10 s lead.
    let login = Login::expiring_in(12);
    home.write_creds(&login.doc());
    let server = TokenServer::for_login(&login);
    let dir = consumer_dir(&home);
    let d = daemon(&home, &server, &dir).spawn();
    let d = expect_follows(d, &home, &dir, SOON, "written at start");
    assert_eq!(mirror_access(&dir).as_deref(), Some(login.access.as_str()));
    let refreshed = wait_until(SOON, || {
        server
            .issued()
            .last()
            .is_some_and(|i| i.access == source_access(&home))
    });
    let seen = Instant::now();
    assert!(refreshed, "the daemon refreshed and saved");
    let d = expect_follows(d, &home, &dir, FOLLOW, "the new access token mirrored");
    let waited = seen.elapsed();
    let out = stop(d);
    out.check_eq(
        "the mirror holds the issued access token",
        mirror_access(&dir),
        Some(server.last_issued().access),
    )
    .check(waited <= FOLLOW, format!("followed in {waited:?}"))
    .expect_only_files(&dir, &[".credentials.json".to_owned()]);
    let text = fs::read_to_string(mirror_path(&dir)).unwrap();
    for r in server.issued().iter().filter_map(|i| i.refresh.clone()) {
        out.check(!text.contains(&r), "no issued refresh token in the mirror");
    }
}

#[test]
fn the_mirror_follows_someone_elses_rewrite_of_the_source() {
    let home = TempHome::new();
    home.write_creds(&Login::fresh().doc());
    let server = TokenServer::start();
    let dir = consumer_dir(&home);
    let mut d = daemon(&home, &server, &dir).spawn();
    d = expect_follows(d, &home, &dir, SOON, "written at start");
    // Claude Code's own refresh (temp file and rename), then an older writer's in-place one.
    let by_rename = Login::fresh();
    replace_atomically(&home.creds_path(), &by_rename.doc());
    d = expect_follows(d, &home, &dir, FOLLOW, "a renamed-in source followed");
    let in_place = Login::fresh();
    home.write_creds(&in_place.doc());
    d = expect_follows(d, &home, &dir, FOLLOW, "an in-place rewrite followed");
    let out = stop(d);
    out.check_eq(
        "the mirror holds the last writer's token",
        mirror_access(&dir),
        Some(in_place.access.clone()),
    )
    .check_eq("requests", server.count(), 0);
}

#[test]
fn a_source_without_an_access_token_empties_the_mirror_of_claude_ai_oauth_only() {
    // A logout (the command removes claudeAiOauth; or the whole file goes, as when it held
    // nothing else) and tokens blanked after a refusal (as Claude Code leaves them): either way
    // the mirror keeps no login, and a blank token is never mirrored; the consumer's own keys
    // stay. A new login comes back to the mirror.
    for how in ["logout", "blanked", "file removed"] {
        let home = TempHome::new();
        let login = Login::fresh();
        home.write_creds(&login.doc());
        let server = TokenServer::for_login(&login);
        let dir = consumer_dir(&home);
        let mut d = daemon(&home, &server, &dir).spawn();
        d = expect_follows(d, &home, &dir, SOON, "written at start");
        if how == "logout" {
            Cmd::new(&home)
                .args(["logout", "--yes"])
                .run()
                .expect_code(0);
        } else if how == "file removed" {
            fs::remove_file(home.creds_path()).unwrap();
        } else {
            let mut doc = login.doc();
            doc["claudeAiOauth"]["accessToken"] = json!("");
            doc["claudeAiOauth"]["refreshToken"] = json!("");
            doc["claudeAiOauth"]["expiresAt"] = json!(0);
            replace_atomically(&home.creds_path(), &doc);
        }
        // A file that is gone may be a writer's rename in progress: the daemon may give it a
        // moment to come back before it calls it a logout.
        let limit = if how == "file removed" { SOON } else { FOLLOW };
        d = expect_follows(d, &home, &dir, limit, &format!("{how}: login removed"));
        let mirror = read_mirror(&dir).unwrap();
        assert!(
            mirror.get("claudeAiOauth").is_none(),
            "{how}: no claudeAiOauth left: {mirror:#}"
        );
        let again = Login::fresh();
        replace_atomically(&home.creds_path(), &again.doc());
        d = expect_follows(
            d,
            &home,
            &dir,
            FOLLOW,
            &format!("{how}: a new login mirrored"),
        );
        let out = stop(d);
        out.check_eq(
            format!("{how}: the new login's token"),
            mirror_access(&dir),
            Some(again.access.clone()),
        );
    }
}

#[test]
fn a_mirror_the_consumer_spoiled_or_removed_is_rewritten_on_sighup() {
    let home = TempHome::new();
    let login = Login::fresh();
    home.write_creds(&login.doc());
    let server = TokenServer::for_login(&login);
    let dir = consumer_dir(&home);
    let mut d = daemon(&home, &server, &dir).spawn();
    d = expect_follows(d, &home, &dir, SOON, "written at start");

    // An old copy of its own, its keys beside it: the login replaced, the keys kept.
    let mut spoiled = consumer_keys();
    spoiled["claudeAiOauth"] = json!({"accessToken": "sk-ant-oat01-stale-copy", "expiresAt": 1});
    write_creds_at(&mirror_path(&dir), &spoiled);
    send_signal(&d, libc::SIGHUP);
    d = expect_follows(d, &home, &dir, SOON, "a spoiled mirror rewritten on SIGHUP");

    // Removed altogether (the consumer's keys go with it): the login comes back alone.
    fs::remove_file(mirror_path(&dir)).unwrap();
    send_signal(&d, libc::SIGHUP);
    if let Err(why) = wait_for_mirror(&dir, &home.creds_path(), &json!({}), SOON) {
        panic!(
            "a removed mirror rewritten on SIGHUP: {why}\n{}",
            stop(d).context()
        );
    }
    // The whole directory removed (a volume unmounted): made again.
    fs::remove_dir_all(&dir).unwrap();
    send_signal(&d, libc::SIGHUP);
    if let Err(why) = wait_for_mirror(&dir, &home.creds_path(), &json!({}), SOON) {
        panic!(
            "a removed directory made again on SIGHUP: {why}\n{}",
            stop(d).context()
        );
    }
    let out = stop(d);
    out.check_eq("requests", server.count(), 0).check_eq(
        "a directory it made is 0700",
        mode_of(&dir),
        0o700,
    );
}

#[test]
fn the_periodic_check_rewrites_a_spoiled_mirror_without_a_signal() {
    let home = TempHome::new();
    let login = Login::fresh();
    home.write_creds(&login.doc());
    let server = TokenServer::for_login(&login);
    let dir = consumer_dir(&home);
    let mut d = daemon(&home, &server, &dir)
        .env("CLAUDE_TOKEND_TEST_MIRROR_CHECK_MS", "300")
        .spawn();
    d = expect_follows(d, &home, &dir, SOON, "written at start");
    let mut spoiled = consumer_keys();
    spoiled["claudeAiOauth"] = json!({"accessToken": "sk-ant-oat01-stale-copy", "expiresAt": 1});
    write_creds_at(&mirror_path(&dir), &spoiled);
    d = expect_follows(
        d,
        &home,
        &dir,
        SOON,
        "a spoiled mirror rewritten by the check",
    );
    fs::remove_file(mirror_path(&dir)).unwrap();
    if let Err(why) = wait_for_mirror(&dir, &home.creds_path(), &json!({}), SOON) {
        panic!(
            "a removed mirror rewritten by the check: {why}\n{}",
            stop(d).context()
        );
    }
    stop(d).check_eq("requests", server.count(), 0);
}

#[test]
fn a_refused_refresh_leaves_the_mirrors_token_alone() {
    let home = TempHome::new();
    // Due at once under the 10 s lead, still valid for the few seconds the test takes: the
    // copy stays usable.
    let login = Login::expiring_in(8);
    home.write_creds(&login.doc());
    let server = TokenServer::start(); // knows no refresh token: invalid_grant
    let dir = consumer_dir(&home);
    let log = home.path().join("daemon.log");
    let mut d = daemon(&home, &server, &dir).stderr_to(&log).spawn();
    d = expect_follows(d, &home, &dir, SOON, "written at start");
    assert!(
        wait_until(SOON, || server.count() >= 1),
        "the refresh was tried"
    );
    // Once the refusal is told (it names the way out), ask for a re-check of the mirrors and
    // give them longer than the 1 s a change would take to reach them.
    assert!(
        wait_until(SOON, || fs::read_to_string(&log)
            .is_ok_and(|l| l.contains("claude-tokend login"))),
        "the refusal was logged: {}",
        fs::read_to_string(&log).unwrap_or_default()
    );
    send_signal(&d, libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(1500));
    let mirror = read_mirror(&dir).expect("the mirror is still there");
    let out = stop(d);
    out.check_eq(
        "the mirror still holds the source's access token",
        mirror["claudeAiOauth"]["accessToken"].as_str(),
        Some(login.access.as_str()),
    )
    .check_eq(
        "the mirror is still exactly the source's copy",
        mirror.clone(),
        expected_mirror(&login.doc(), &consumer_keys()),
    );
}

#[test]
fn a_missing_mirror_directory_is_created_0700_and_its_file_0600() {
    let home = TempHome::new();
    let login = Login::fresh();
    home.write_creds(&login.doc());
    let server = TokenServer::for_login(&login);
    let parent = home.path().join("mnt");
    fs::create_dir(&parent).unwrap();
    fs::set_permissions(&parent, fs::Permissions::from_mode(0o755)).unwrap();
    let dir = parent.join("claude");
    let d = daemon(&home, &server, &dir).umask(0).spawn();
    if let Err(why) = wait_for_mirror(&dir, &home.creds_path(), &json!({}), SOON) {
        panic!(
            "a missing directory made and written: {why}\n{}",
            stop(d).context()
        );
    }
    let out = stop(d);
    out.check_eq("the directory's mode", mode_of(&dir), 0o700)
        .check_eq("the file's mode", mode_of(&mirror_path(&dir)), 0o600)
        .expect_only_files(&dir, &[".credentials.json".to_owned()]);
}

/// A mirror that cannot be written (its "directory" is a regular file) never holds up the
/// source: a due login is refreshed and saved at once.
#[test]
fn an_unwritable_mirror_never_delays_the_sources_refresh() {
    let home = TempHome::new();
    let login = Login::expiring_in(8); // due at once under the 10 s lead
    home.write_creds(&login.doc());
    let server = TokenServer::for_login(&login);
    let not_a_dir = home.path().join("not-a-dir");
    write_raw_at(&not_a_dir, b"a file\n");
    let d = daemon(&home, &server, &not_a_dir).spawn();
    let saved = wait_until(Duration::from_secs(3), || {
        server
            .issued()
            .last()
            .is_some_and(|i| i.access == source_access(&home))
    });
    let out = stop(d);
    out.check(saved, "the due login refreshed and saved within 3 s")
        .check_eq(
            "the file is still a file",
            fs::read(&not_a_dir).unwrap(),
            b"a file\n".to_vec(),
        );
}

/// A directory whose parent is missing is not made (nor its parent): the failure is logged
/// once, naming the mirror, and once the parent appears the next check writes it.
#[test]
fn a_mirror_whose_parent_is_missing_is_written_once_the_parent_appears() {
    let home = TempHome::new();
    let login = Login::fresh();
    home.write_creds(&login.doc());
    let server = TokenServer::for_login(&login);
    let parent = home.path().join("not-mounted-yet");
    let dir = parent.join("claude");
    let log = home.path().join("daemon.log");
    let d = daemon(&home, &server, &dir).stderr_to(&log).spawn();
    let dir_text = dir.display().to_string();
    let logged = wait_until(SOON, || {
        fs::read_to_string(&log).is_ok_and(|l| l.contains(&dir_text))
    });
    let naming = |text: &str| text.lines().filter(|l| l.contains(&dir_text)).count();
    let first = fs::read_to_string(&log).unwrap_or_default();
    assert!(
        logged,
        "the failed write was logged, naming the mirror:\n{first}"
    );
    // Retried meanwhile (the transient backoff starts near a second), but logged once until it
    // works.
    std::thread::sleep(Duration::from_millis(2500));
    let later = fs::read_to_string(&log).unwrap_or_default();
    assert!(
        is_running(&d),
        "an unwritable mirror does not stop the daemon"
    );
    assert_eq!(
        naming(&later),
        naming(&first),
        "the failure is not logged again while it lasts:\n{later}"
    );
    assert!(
        !parent.exists(),
        "the missing parent is not made (only DIR itself is)"
    );
    fs::create_dir(&parent).unwrap();
    send_signal(&d, libc::SIGHUP);
    let got = wait_for_mirror(&dir, &home.creds_path(), &json!({}), SOON);
    let out = stop(d);
    if let Err(why) = got {
        panic!(
            "written once the parent appeared: {why}\n{}\n{}",
            out.context(),
            fs::read_to_string(&log).unwrap_or_default()
        );
    }
    out.check_eq("requests", server.count(), 0);
}

/// Only the copied keys the source has: nothing invented for the ones it lacks.
#[test]
fn the_mirror_holds_only_the_copied_keys_present_in_the_source() {
    let home = TempHome::new();
    let login = Login::fresh();
    // A source without a plan or tier: the mirror has no such keys either.
    let mut doc = login.doc();
    let o = doc["claudeAiOauth"].as_object_mut().unwrap();
    o.remove("subscriptionType");
    o.remove("rateLimitTier");
    home.write_creds(&doc);
    let server = TokenServer::for_login(&login);
    let dir = home.path().join("m");
    let out = Cmd::new(&home)
        .server(&server)
        .args(["--once", "--mirror"])
        .arg(&dir)
        .run();
    out.expect_code(0);
    let mirror = read_mirror(&dir).unwrap_or_else(|e| panic!("{e}\n{}", out.context()));
    let oauth: Vec<String> = keys(&mirror["claudeAiOauth"]);
    let mut oauth_sorted = oauth.clone();
    oauth_sorted.sort();
    out.check_eq(
        "claudeAiOauth's keys",
        oauth_sorted,
        vec![
            "accessToken".to_owned(),
            "expiresAt".to_owned(),
            "scopes".to_owned(),
        ],
    )
    .check_eq(
        "the copied values",
        Value::Object(access_only(&doc).unwrap()),
        mirror["claudeAiOauth"].clone(),
    );
}
