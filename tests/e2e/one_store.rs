//! "One store, one login, however it is named" (CONTRACT.md, "Interrupted, slow or absent"):
//! entries that reach the same file, through a symlinked config directory, `..` or a relative
//! path, are one login, known by the first entry's name: `status` prints one object, `--once`
//! sends one request, the daemon tells the user once.

use std::path::{Path, PathBuf};
use std::time::Duration;

use claude_tokend_e2e::*;
use serde_json::{Value, json};

/// `HOME/real` holding `login`, and `HOME/link`, a symlink to it.
fn real_and_link(home: &TempHome, login: &Login) -> (PathBuf, PathBuf) {
    let real = home.path().join("real");
    write_creds_at(&real.join(".credentials.json"), &login.doc());
    let link = home.path().join("link");
    std::os::unix::fs::symlink(&real, &link).expect("symlink the config dir");
    (real, link)
}

/// `A/../A`, spelled out.
fn dotdot(dir: &Path) -> PathBuf {
    dir.join("..")
        .join(dir.file_name().expect("a named directory"))
}

/// Each way of naming the same file twice (or three times), after `real` itself.
fn aliases(real: &Path, link: &Path) -> Vec<Vec<std::ffi::OsString>> {
    let flag = |f: &str, p: &Path| vec![f.into(), p.as_os_str().to_owned()];
    vec![
        flag("--config-dir", link),
        flag("--config-dir", &dotdot(real)),
        flag("--credentials", &link.join(".credentials.json")),
        [
            flag("--config-dir", &dotdot(link)),
            flag("--config-dir", link),
        ]
        .concat(),
    ]
}

#[test]
fn status_shows_one_login_for_one_store_named_several_ways() {
    let home = TempHome::new();
    let login = Login::fresh();
    let (real, link) = real_and_link(&home, &login);
    for more in aliases(&real, &link) {
        let out = Cmd::new(&home)
            .args(["status", "--json", "--config-dir"])
            .arg(&real)
            .args(&more)
            .run();
        out.expect_code(0);
        let v: Value = serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("status --json is not JSON ({e})\n{}", out.context()));
        out.check(v.is_object(), "one store: one object, not an array")
            .check_eq(
                "the first entry's name",
                &v["path"],
                &json!(real.join(".credentials.json").display().to_string()),
            );
    }
}

#[test]
fn once_sends_one_request_and_a_relative_name_is_the_same_login() {
    let home = TempHome::new();
    let login = Login::due();
    let (real, link) = real_and_link(&home, &login);
    let server = TokenServer::for_login(&login);
    let out = Cmd::new(&home)
        .server(&server)
        .current_dir(home.path())
        .args(["--once", "--config-dir", "link", "--config-dir"])
        .arg(&real)
        .arg("--config-dir")
        .arg(dotdot(&link))
        .run();
    out.expect_code(0).check_eq("requests", server.count(), 1);
    out.check(
        server.issued().last().is_some_and(|i| {
            read_json(&real.join(".credentials.json"))["claudeAiOauth"]["accessToken"]
                == json!(i.access)
        }),
        "the file holds the new token",
    );
}

/// The daemon on one store named twice: a refused login is told once, under the first
/// entry's name, and its refresh token is sent once.
#[test]
fn the_daemon_tells_once_under_the_first_name() {
    let home = TempHome::new();
    let login = Login::due();
    let (real, link) = real_and_link(&home, &login);
    let server = TokenServer::start(); // knows no refresh token: invalid_grant
    let told = home.path().join("told");
    let d = Cmd::new(&home)
        .server(&server)
        .arg("--config-dir")
        .arg(&link)
        .arg("--config-dir")
        .arg(&real)
        .args([
            "--notify-cmd",
            &format!(
                "echo \"$CLAUDE_TOKEND_EVENT $CLAUDE_TOKEND_LOGIN\" >> '{}'",
                told.display()
            ),
        ])
        .timeout(Duration::from_secs(60))
        .spawn();
    assert!(
        wait_until(Duration::from_secs(15), || std::fs::read_to_string(&told)
            .is_ok_and(|t| !t.is_empty())),
        "no notice"
    );
    // Time for a second login of the same store to have been refused and told too.
    std::thread::sleep(Duration::from_secs(3));
    let out = stop(d);
    let notices = std::fs::read_to_string(&told).unwrap_or_default();
    out.check_eq(
        "notices",
        notices.lines().collect::<Vec<_>>(),
        vec![format!("login-needed {}", link.join(".credentials.json").display()).as_str()],
    )
    .check_eq("requests", server.count(), 1);
}
