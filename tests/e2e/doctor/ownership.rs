//! `store` when what is at the credentials path is not a file of this user's: a directory
//! named with `--credentials`, a FIFO, a login root looks at in another user's directory.
//! Each gets the fix that fits what is there (never `chmod 600` of a directory or a FIFO,
//! never a chown that hands a user's file to root).

use std::os::unix::fs::chown;

use claude_tokend_e2e::*;

use super::hostile::mkfifo;
use super::support::*;

const NOBODY: u32 = 65534;

#[test]
fn a_directory_named_with_credentials_is_told_to_use_config_dir() {
    let home = TempHome::new();
    home.write_creds(&Login::fresh().doc());
    let dir = home.claude_dir();
    let r = Report::run(doctor(
        &home,
        &[
            "--json",
            "--offline",
            "--credentials",
            &dir.display().to_string(),
        ],
    ));
    r.out.expect_code(1);
    r.expect("store", "fail", "is a directory");
    let fix = r.fix("store");
    r.out.check(
        fix.contains(&format!("--config-dir {}", dir.display())) && !fix.contains("chmod"),
        format!("the fix names --config-dir, not chmod: {fix}"),
    );
}

#[test]
fn a_fifo_as_the_credentials_file_is_moved_away_not_chmodded() {
    let home = TempHome::new();
    std::fs::create_dir_all(home.claude_dir()).unwrap();
    mkfifo(&home.creds_path());
    let r = Report::run(doctor(&home, &["--json", "--offline"]));
    r.out.expect_code(1);
    r.expect("store", "fail", "not a regular file");
    let fix = r.fix("store");
    r.out.check(
        fix.contains("mv ") && !fix.contains("chmod"),
        format!("the fix moves it away: {fix}"),
    );
}

/// Root running doctor for a user's HOME (`sudo -E`): the user's own login is theirs, not "a
/// file left by sudo claude"; a file of root's in it is given back to them, never to root.
#[test]
fn root_judges_another_users_login_by_its_directorys_owner() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: only root can look at another user's login (not running as root)");
        return;
    }
    let home = TempHome::new();
    home.write_creds(&Login::fresh().doc());
    chown(home.claude_dir(), Some(NOBODY), Some(NOBODY)).unwrap();
    chown(home.creds_path(), Some(NOBODY), Some(NOBODY)).unwrap();
    let r = Report::run(doctor(&home, &["--json", "--offline"]));
    r.expect("store", "ok", "");
    chown(home.creds_path(), Some(0), Some(0)).unwrap();
    let r = Report::run(doctor(&home, &["--json", "--offline"]));
    r.out.expect_code(1);
    r.expect("store", "fail", "sudo claude");
    let fix = r.fix("store");
    r.out.check(
        fix.contains("sudo chown ") && !fix.contains("$(id -un)") && !fix.contains("root:"),
        format!("given back to the directory's owner, not to root: {fix}"),
    );
}
