//! What is refused at start with exit 2, by the daemon, `--once` and `refresh` alike, before
//! anything is sent or written: a mirror that would overwrite a real login (a configured
//! login's config directory or store, or a file holding a refresh token), the same directory
//! twice, and a mirror whose login is ambiguous. And the pairing that is accepted: each mirror
//! belongs to the nearest login flag before it.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::Duration;

use claude_tokend_e2e::*;
use serde_json::json;

/// The three runs that write mirrors.
const RUNS: [&[&str]; 3] = [&[], &["--once"], &["refresh"]];

/// Runs `cmd` and returns its output; a daemon that did not exit at start within a few seconds
/// is stopped (its exit code is then 0, which fails the caller's check).
fn run_briefly(cmd: Cmd) -> Out {
    let r = cmd.timeout(Duration::from_secs(30)).spawn();
    if !wait_until(Duration::from_secs(4), || !is_running(&r)) {
        send_signal(&r, libc::SIGTERM);
    }
    r.wait()
}

/// A config directory `name` under the home, holding `login`.
fn config_dir(home: &TempHome, name: &str, login: &Login) -> PathBuf {
    let dir = home.path().join(name);
    write_creds_at(&dir.join(".credentials.json"), &login.doc());
    dir
}

fn s(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

/// Every run with `args` exits 2 at start, says it is about a mirror, sends nothing, and leaves
/// the given files as they were.
#[track_caller]
fn expect_refused(home: &TempHome, args: &[&str], untouched: &[&Path]) {
    let server = TokenServer::start();
    for run in RUNS {
        let before: Vec<FileState> = untouched.iter().map(|p| FileState::of(p)).collect();
        let out = run_briefly(Cmd::new(home).server(&server).args(run).args(args));
        out.expect_code(2).check(
            out.stderr.to_lowercase().contains("mirror"),
            "the message is about the mirror",
        );
        for (p, b) in untouched.iter().zip(&before) {
            out.expect_untouched(p, b);
        }
        out.check_eq("requests", server.count(), 0);
    }
}

/// The control beside each refusal: `--once ARGS --mirror OK` (a fresh mirror directory) with
/// the same logins is accepted and writes it, so the exit 2 above was about the mirror, not a
/// flag the program does not know.
#[track_caller]
fn expect_accepted(home: &TempHome, args: &[&str]) {
    let ok = home.path().join(format!("ok-{}", random_alnum(6)));
    let server = TokenServer::start();
    let out = Cmd::new(home)
        .server(&server)
        .arg("--once")
        .args(args)
        .arg("--mirror")
        .arg(&ok)
        .run();
    out.expect_code(0)
        .check(read_mirror(&ok).is_ok(), "the legal mirror was written");
}

#[test]
fn a_mirror_that_is_the_logins_own_config_dir_is_refused() {
    let home = TempHome::new();
    home.write_creds(&Login::fresh().doc());
    expect_accepted(&home, &[]);
    let own = home.claude_dir();
    let alias = home.path().join("alias");
    symlink(&own, &alias).unwrap();
    let dotted = home.path().join(".").join(".claude");
    let slashed = format!("{}/", own.display());
    let creds = home.creds_path();
    for dir in [s(&own), s(&alias), s(&dotted), slashed.as_str()] {
        expect_refused(&home, &["--mirror", dir], &[&creds]);
        expect_refused(
            &home,
            &["--config-dir", s(&own), "--mirror", dir],
            &[&creds],
        );
    }
}

#[test]
fn a_mirror_that_is_another_logins_store_or_config_dir_is_refused() {
    let home = TempHome::new();
    let a = config_dir(&home, "a", &Login::fresh());
    let b = config_dir(&home, "b", &Login::fresh());
    let (a_creds, b_creds) = (a.join(".credentials.json"), b.join(".credentials.json"));
    expect_accepted(&home, &["--config-dir", s(&b), "--config-dir", s(&a)]);
    // B named by its file: the mirror of A whose `.credentials.json` is B's store.
    expect_refused(
        &home,
        &[
            "--config-dir",
            s(&a),
            "--mirror",
            s(&b),
            "--credentials",
            s(&b_creds),
        ],
        &[&a_creds, &b_creds],
    );
    // B named through a link elsewhere (its config directory is the link's, the home): the
    // mirror's directory is not B's config directory, but its file is B's store.
    let b_link = home.path().join("b-link.json");
    symlink(&b_creds, &b_link).unwrap();
    expect_refused(
        &home,
        &[
            "--config-dir",
            s(&a),
            "--mirror",
            s(&b),
            "--credentials",
            s(&b_link),
        ],
        &[&a_creds, &b_creds],
    );
    // B named by its directory, the mirror of A given before or after it.
    expect_refused(
        &home,
        &[
            "--config-dir",
            s(&a),
            "--mirror",
            s(&b),
            "--config-dir",
            s(&b),
        ],
        &[&a_creds, &b_creds],
    );
    expect_refused(
        &home,
        &[
            "--config-dir",
            s(&b),
            "--config-dir",
            s(&a),
            "--mirror",
            s(&b),
        ],
        &[&a_creds, &b_creds],
    );
}

/// A mirror file that holds someone's real login (a non-empty refresh token) is refused and
/// left byte for byte; a blank refresh token is no login and is replaced.
#[test]
fn a_mirror_holding_a_refresh_token_is_refused_and_left_untouched() {
    let home = TempHome::new();
    let login = Login::fresh();
    home.write_creds(&login.doc());
    let dir = home.path().join("mirror");
    let someone = Login::fresh();
    write_creds_at(&mirror_path(&dir), &someone.doc());
    let creds = home.creds_path();
    expect_refused(&home, &["--mirror", s(&dir)], &[&mirror_path(&dir), &creds]);
    // With only the refresh token left in claudeAiOauth, still someone's login.
    write_creds_at(
        &mirror_path(&dir),
        &json!({"claudeAiOauth": {"refreshToken": someone.refresh}}),
    );
    expect_refused(&home, &["--mirror", s(&dir)], &[&mirror_path(&dir), &creds]);

    let mut blank = someone.doc();
    blank["claudeAiOauth"]["refreshToken"] = json!("");
    write_creds_at(&mirror_path(&dir), &blank);
    let server = TokenServer::for_login(&login);
    let out = Cmd::new(&home)
        .server(&server)
        .args(["--once", "--mirror"])
        .arg(&dir)
        .run();
    out.expect_code(0);
    // Its claudeAiOauth is replaced whole; its other keys are the consumer's and stay.
    let mut consumer = blank.clone();
    consumer.as_object_mut().unwrap().remove("claudeAiOauth");
    let why = mirror_mismatch(&dir, &login.doc(), &consumer);
    out.check(
        why.is_none(),
        format!("a blank refresh token is replaced: {why:?}"),
    );
}

#[test]
fn the_same_mirror_twice_is_refused() {
    let home = TempHome::new();
    home.write_creds(&Login::fresh().doc());
    let a = config_dir(&home, "a", &Login::fresh());
    let b = config_dir(&home, "b", &Login::fresh());
    let dir = home.path().join("mirror");
    fs::create_dir(&dir).unwrap();
    let link = home.path().join("mirror-link");
    symlink(&dir, &link).unwrap();
    let slashed = format!("{}/", dir.display());
    let creds = home.creds_path();
    expect_accepted(&home, &["--mirror", s(&home.path().join("another"))]);
    for other in [s(&dir), slashed.as_str(), s(&link)] {
        expect_refused(&home, &["--mirror", s(&dir), "--mirror", other], &[&creds]);
        // Two logins, one directory.
        expect_refused(
            &home,
            &[
                "--config-dir",
                s(&a),
                "--mirror",
                s(&dir),
                "--config-dir",
                s(&b),
                "--mirror",
                other,
            ],
            &[&a.join(".credentials.json"), &b.join(".credentials.json")],
        );
    }
    // Through the variable too.
    let server = TokenServer::start();
    let list = format!("{}:{}", dir.display(), link.display());
    let out = Cmd::new(&home)
        .server(&server)
        .env("CLAUDE_TOKEND_MIRRORS", &list)
        .arg("--once")
        .run();
    out.expect_code(2);
    out.check(
        list_names(&dir).is_empty(),
        "nothing written into the mirror",
    );
}

/// With several logins, a mirror given before any login flag, or by the variable, has no
/// login to belong to.
#[test]
fn an_unpaired_mirror_with_several_logins_is_refused() {
    let home = TempHome::new();
    let a = config_dir(&home, "a", &Login::fresh());
    let b = config_dir(&home, "b", &Login::fresh());
    let dir = home.path().join("mirror");
    expect_accepted(&home, &["--config-dir", s(&a), "--config-dir", s(&b)]);
    let untouched = [a.join(".credentials.json"), b.join(".credentials.json")];
    let untouched: Vec<&Path> = untouched.iter().map(PathBuf::as_path).collect();
    expect_refused(
        &home,
        &[
            "--mirror",
            s(&dir),
            "--config-dir",
            s(&a),
            "--config-dir",
            s(&b),
        ],
        &untouched,
    );
    let server = TokenServer::start();
    let list = format!("{}:{}", a.display(), b.display());
    for run in RUNS {
        // Several logins from CLAUDE_TOKEND_CONFIG_DIRS, the mirror by flag.
        run_briefly(
            Cmd::new(&home)
                .server(&server)
                .env("CLAUDE_TOKEND_CONFIG_DIRS", &list)
                .args(run)
                .arg("--mirror")
                .arg(&dir),
        )
        .expect_code(2);
        // Several logins by flag, the mirror by the variable.
        let out = run_briefly(
            Cmd::new(&home)
                .server(&server)
                .env("CLAUDE_TOKEND_MIRRORS", &dir)
                .args(run)
                .args(["--config-dir", s(&a), "--config-dir", s(&b)]),
        );
        out.expect_code(2).check(
            out.stderr.contains("--mirror"),
            "the message says to use the flags",
        );
    }
    assert!(!dir.exists(), "no mirror written");
    check_eq("requests", server.count(), 0);
}

/// Each mirror gets the token of the login named before it; one before any login flag belongs
/// to the only login.
#[test]
fn each_mirror_holds_its_own_logins_token() {
    let home = TempHome::new();
    let (la, lb) = (Login::fresh(), Login::fresh());
    let a = config_dir(&home, "a", &la);
    let b_creds = home.path().join("b.json");
    write_creds_at(&b_creds, &lb.doc());
    let (ma, ma2, mb) = (
        home.path().join("ma"),
        home.path().join("ma2"),
        home.path().join("mb"),
    );
    let server = TokenServer::start();
    let out = Cmd::new(&home)
        .server(&server)
        .args([
            "--once",
            "--config-dir",
            s(&a),
            "--mirror",
            s(&ma),
            "--mirror",
        ])
        .arg(&ma2)
        .args(["--credentials", s(&b_creds), "--mirror", s(&mb)])
        .run();
    out.expect_code(0);
    for (dir, login) in [(&ma, &la), (&ma2, &la), (&mb, &lb)] {
        let why = mirror_mismatch(dir, &login.doc(), &json!({}));
        out.check(why.is_none(), format!("{}: {why:?}", dir.display()));
    }

    // Before the only login's flag.
    let mc = home.path().join("mc");
    let out = Cmd::new(&home)
        .server(&server)
        .args(["--once", "--mirror", s(&mc), "--config-dir", s(&a)])
        .run();
    out.expect_code(0);
    let why = mirror_mismatch(&mc, &la.doc(), &json!({}));
    out.check(why.is_none(), format!("the only login's mirror: {why:?}"))
        .check_eq("requests", server.count(), 0);
}

/// `CLAUDE_TOKEND_MIRRORS` names the single login's mirrors (`~` expanded, `:`-separated);
/// `--mirror` flags replace it.
#[test]
fn the_mirrors_variable_serves_the_single_login_and_flags_replace_it() {
    let home = TempHome::new();
    let login = Login::fresh();
    home.write_creds(&login.doc());
    let server = TokenServer::start();
    let (one, two) = (home.path().join("one"), home.path().join("two"));
    let list = format!("{}:~/two", one.display());
    let out = Cmd::new(&home)
        .server(&server)
        .env("CLAUDE_TOKEND_MIRRORS", &list)
        .arg("--once")
        .run();
    out.expect_code(0);
    for dir in [&one, &two] {
        let why = mirror_mismatch(dir, &login.doc(), &json!({}));
        out.check(why.is_none(), format!("{}: {why:?}", dir.display()));
    }

    let (three, four) = (home.path().join("three"), home.path().join("four"));
    let out = Cmd::new(&home)
        .server(&server)
        .env("CLAUDE_TOKEND_MIRRORS", &three)
        .args(["--once", "--mirror", s(&four)])
        .run();
    out.expect_code(0)
        .check(!three.exists(), "the variable is replaced by the flag");
    let why = mirror_mismatch(&four, &login.doc(), &json!({}));
    out.check(why.is_none(), format!("the flag's mirror: {why:?}"));
}
