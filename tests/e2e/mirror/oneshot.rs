//! `--once` and `refresh` bring their mirrors up to date on every run, refreshed or not, after
//! the source is saved; a mirror they cannot write is a warning on stderr and never changes the
//! exit code (the source's). `token`, `status` and `logout` write no mirror, whatever flags they
//! are given.

use std::fs;
use std::path::{Path, PathBuf};

use claude_tokend_e2e::*;
use serde_json::{Value, json};

/// `claude-tokend ARGS --mirror DIR` against `server`.
fn with_mirror(home: &TempHome, server: &TokenServer, args: &[&str], dir: &Path) -> Out {
    Cmd::new(home)
        .server(server)
        .args(args)
        .arg("--mirror")
        .arg(dir)
        .run()
}

/// A mirror directory holding a stale copy (an old access-only login) beside the consumer's
/// own keys.
fn stale_mirror(home: &TempHome) -> PathBuf {
    let dir = home.path().join("mirror");
    let mut doc = consumer_keys();
    doc["claudeAiOauth"] = json!({"accessToken": "sk-ant-oat01-an-old-copy", "expiresAt": 1});
    write_creds_at(&mirror_path(&dir), &doc);
    dir
}

#[track_caller]
fn expect_mirrors_source(out: &Out, home: &TempHome, dir: &Path, consumer: &Value) {
    let why = mirror_mismatch(dir, &home.read_creds(), consumer);
    out.check(
        why.is_none(),
        format!("the mirror: {}", why.unwrap_or_default()),
    );
}

#[test]
fn once_with_a_fresh_login_brings_a_stale_mirror_up_to_date_silently() {
    let home = TempHome::new();
    let login = Login::fresh();
    home.write_creds(&login.doc());
    let server = TokenServer::for_login(&login);
    let dir = stale_mirror(&home);
    let before = home.state();
    let out = with_mirror(&home, &server, &["--once"], &dir);
    out.expect_code(0)
        .expect_silent()
        .check_eq("requests", server.count(), 0)
        .expect_untouched(&home.creds_path(), &before)
        .expect_only_files(&dir, &[".credentials.json".to_owned()]);
    expect_mirrors_source(&out, &home, &dir, &consumer_keys());
    // A second run with nothing changed leaves it as it is.
    let first = FileState::of(&mirror_path(&dir));
    let again = with_mirror(&home, &server, &["--once"], &dir);
    again.expect_code(0).expect_silent();
    expect_mirrors_source(&again, &home, &dir, &consumer_keys());
    again.check_eq(
        "the same document",
        FileState::of(&mirror_path(&dir)).bytes,
        first.bytes,
    );
}

#[test]
fn once_with_a_due_login_refreshes_then_mirrors_the_new_token() {
    let home = TempHome::new();
    let login = Login::due();
    home.write_creds(&login.doc());
    let server = TokenServer::for_login(&login);
    let dir = stale_mirror(&home);
    let out = with_mirror(&home, &server, &["--once"], &dir);
    out.expect_code(0)
        .expect_silent()
        .check_eq("requests", server.count(), 1)
        .check_eq(
            "the mirror holds the new access token",
            mirror_access(&dir),
            Some(server.last_issued().access),
        );
    expect_mirrors_source(&out, &home, &dir, &consumer_keys());
    let text = fs::read_to_string(mirror_path(&dir)).unwrap();
    out.check(
        !text.contains(&login.refresh)
            && server
                .last_issued()
                .refresh
                .is_none_or(|r| !text.contains(&r)),
        "no refresh token, old or new, in the mirror",
    );
}

#[test]
fn refresh_mirrors_the_new_token() {
    let home = TempHome::new();
    let login = Login::fresh();
    home.write_creds(&login.doc());
    let server = TokenServer::for_login(&login);
    let dir = stale_mirror(&home);
    let out = with_mirror(&home, &server, &["refresh"], &dir);
    out.expect_code(0)
        .check_eq("requests", server.count(), 1)
        .check_eq(
            "the mirror holds the new access token",
            mirror_access(&dir),
            Some(server.last_issued().access),
        );
    expect_mirrors_source(&out, &home, &dir, &consumer_keys());
}

/// A mirror whose directory's parent is missing, or whose "directory" is a regular file: the
/// run does its work on the source, warns naming the mirror, and exits as the source alone
/// would have; nothing is made on the way.
#[test]
fn an_unwritable_mirror_is_a_warning_and_the_exit_code_is_the_sources() {
    let home = TempHome::new();
    let plain = home.path().join("plain-file");
    write_raw_at(&plain, b"not a directory\n");
    let no_parent = home.path().join("no-such-parent").join("claude");
    for dir in [&plain, &no_parent] {
        let cases: [(&str, Login, bool, i32); 4] = [
            ("--once", Login::fresh(), true, 0),
            ("--once", Login::due(), true, 0),
            ("refresh", Login::fresh(), true, 0),
            // Refused: the source's 77 stays 77.
            ("--once", Login::due(), false, 77),
        ];
        for (command, login, accepted, code) in cases {
            home.write_creds(&login.doc());
            let server = TokenServer::start();
            if accepted {
                server.accept_refresh(&login.refresh);
            }
            let plain_before = FileState::of(&plain);
            let out = with_mirror(&home, &server, &[command], dir);
            out.expect_code(code)
                .check(
                    out.stderr.contains(&dir.display().to_string()),
                    format!("{command}: the warning names the mirror {}", dir.display()),
                )
                .expect_no_secret(&login.secrets())
                .expect_untouched(&plain, &plain_before)
                .check(
                    !home.path().join("no-such-parent").exists(),
                    "a missing parent is not made",
                );
            if code == 0 && server.count() > 0 {
                out.check_eq(
                    "the source was saved all the same",
                    home.read_creds()["claudeAiOauth"]["accessToken"].clone(),
                    json!(server.last_issued().access),
                );
            }
        }
    }
}

/// Run as root, a mirror belongs to its directory's owner (a consumer's, here `nobody`), and a
/// directory it makes belongs to its parent's owner. Only root can give a file away: as any
/// other user the test says so and checks nothing.
#[test]
fn as_root_a_mirror_belongs_to_the_owner_of_its_directory() {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: only root can make a file another user's (not running as root)");
        return;
    }
    const NOBODY: u32 = 65534;
    let home = TempHome::new();
    let login = Login::fresh();
    home.write_creds(&login.doc());
    let server = TokenServer::for_login(&login);
    let (dir, parent) = (home.path().join("theirs"), home.path().join("their-parent"));
    for d in [&dir, &parent] {
        fs::create_dir(d).unwrap();
        std::os::unix::fs::chown(d, Some(NOBODY), Some(NOBODY)).unwrap();
    }
    let made = parent.join("claude");
    let out = Cmd::new(&home)
        .server(&server)
        .args(["--once", "--mirror"])
        .arg(&dir)
        .arg("--mirror")
        .arg(&made)
        .run();
    out.expect_code(0);
    let owner = |p: &Path| {
        let m = fs::symlink_metadata(p).unwrap();
        (
            std::os::unix::fs::MetadataExt::uid(&m),
            std::os::unix::fs::MetadataExt::gid(&m),
        )
    };
    for p in [mirror_path(&dir), made.clone(), mirror_path(&made)] {
        out.check_eq(
            format!("owner of {}", p.display()),
            owner(&p),
            (NOBODY, NOBODY),
        );
    }
    expect_mirrors_source(&out, &home, &dir, &json!({}));
    expect_mirrors_source(&out, &home, &made, &json!({}));
}

/// `token` (even when it refreshes), `status` and `logout` never write a mirror: a missing one
/// is not made, a stale one is left byte for byte.
#[test]
fn token_status_and_logout_write_no_mirror() {
    for command in [
        &["token"][..],
        &["status"][..],
        &["status", "--json"][..],
        &["logout", "--yes"][..],
    ] {
        let home = TempHome::new();
        // Due: `token` refreshes it first, so there would be news to mirror.
        let login = Login::due();
        home.write_creds(&login.doc());
        let server = TokenServer::for_login(&login);
        let stale = stale_mirror(&home);
        let stale_before = FileState::of(&mirror_path(&stale));
        let absent = home.path().join("absent");
        let out = Cmd::new(&home)
            .server(&server)
            .args(command)
            .arg("--mirror")
            .arg(&stale)
            .arg("--mirror")
            .arg(&absent)
            .run();
        out.expect_code(0)
            .expect_untouched(&mirror_path(&stale), &stale_before)
            .check(
                !absent.exists(),
                format!("{command:?} made the mirror {}", absent.display()),
            )
            .expect_only_files(&stale, &[".credentials.json".to_owned()]);
    }
}
