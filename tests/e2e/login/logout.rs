//! `logout`: only `claudeAiOauth` goes, a file that held nothing else is deleted, nothing
//! changes without a terminal or `--yes` or over a malformed file, and nothing to log out is
//! success (twice, or with no store at all).

use super::*;

#[test]
fn logout_with_yes_keeps_the_other_keys() {
    let home = TempHome::new();
    let before = Login::fresh().doc();
    home.write_creds(&before);
    let out = Cmd::new(&home).args(["logout", "--yes"]).run();
    out.expect_code(0);
    let after = home.read_creds();
    let mut want = before.clone();
    want.as_object_mut().unwrap().remove("claudeAiOauth");
    out.check_eq("only claudeAiOauth removed", &after, &want);
    out.check_eq("mode", home.mode(), 0o600);
    out.expect_only_files(&home.claude_dir(), &allowed_siblings(".credentials.json"));
}

#[test]
fn logout_deletes_a_file_that_held_only_the_login() {
    let home = TempHome::new();
    let login = Login::fresh();
    home.write_creds(&json!({"claudeAiOauth": {"accessToken": login.access, "refreshToken": login.refresh, "expiresAt": login.expires_at}}));
    let out = Cmd::new(&home).args(["logout", "--yes"]).run();
    out.expect_code(0);
    out.check(!home.creds_path().exists(), "the empty file is deleted");
}

#[test]
fn logout_without_a_terminal_and_without_yes_changes_nothing() {
    let home = TempHome::new();
    home.write_creds(&Login::fresh().doc());
    let before = home.state();
    let out = Cmd::new(&home).arg("logout").run();
    out.check(out.code != 0, "refused");
    out.expect_untouched(&home.creds_path(), &before);
    out.expect_stderr_contains("--yes");
}

#[test]
fn logout_of_a_malformed_file_changes_nothing() {
    let home = TempHome::new();
    home.write_raw(b"{\"claudeAiOauth\": ");
    let before = home.state();
    let out = Cmd::new(&home).args(["logout", "--yes"]).run();
    out.expect_code(78);
    out.expect_untouched(&home.creds_path(), &before);
}

#[test]
fn logout_twice_succeeds_both_times() {
    let home = TempHome::new();
    home.write_creds(&json!({"claudeAiOauth": Login::fresh().doc()["claudeAiOauth"]}));
    Cmd::new(&home)
        .args(["logout", "--yes"])
        .run()
        .expect_code(0);
    assert!(!home.creds_path().exists(), "the first logout removed it");
    let out = Cmd::new(&home).args(["logout", "--yes"]).run();
    out.expect_code(0);
    out.check(out.stdout.contains("No login"), "says there is none");
    out.check(!home.creds_path().exists(), "and created nothing");

    // A file that holds other keys but no login: nothing to do, the file untouched.
    let home = TempHome::new();
    home.write_creds(&json!({"mcpOAuth": {"x": 1}}));
    let before = home.state();
    let out = Cmd::new(&home).args(["logout", "--yes"]).run();
    out.expect_code(0);
    out.expect_untouched(&home.creds_path(), &before);
}

#[test]
fn logout_with_no_store_at_all_says_so_exits_0_and_creates_nothing() {
    let home = TempHome::new();
    // Not even ~/.claude, and no terminal or --yes: nothing to confirm either.
    let out = Cmd::new(&home).arg("logout").run();
    out.expect_code(0);
    out.check(out.stdout.contains("No login"), "says there is none");
    out.check(!home.claude_dir().exists(), "no directory made for nothing");
    let out = Cmd::new(&home).args(["logout", "--yes"]).run();
    out.expect_code(0);
    out.check(!home.claude_dir().exists(), "no directory made for nothing");
}
