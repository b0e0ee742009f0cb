//! A store `login` cannot write (malformed, an unwritable directory, a locked keychain) is
//! refused before the authorize URL is printed; a missing config directory is made first.

use super::*;

/// `login` with stdin closed: whatever the store, the URL must not be printed when the store
/// cannot be written.
fn login_without_paste(home: &TempHome, server: &TokenServer) -> Cmd {
    Cmd::new(home)
        .server(server)
        .env("CLAUDE_TOKEND_API_URL", server.base())
        .args(["login", "--no-browser"])
}

#[track_caller]
fn expect_refused_before_the_browser(out: &Out, code: i32, server: &TokenServer) {
    out.expect_code(code)
        .check(
            !out.stdout.contains("authorize"),
            "no authorize URL was printed",
        )
        .check(
            !out.stderr.contains("Open this URL"),
            "the user is not sent to the browser",
        )
        .check_eq("requests", server.count(), 0);
}

#[test]
fn login_refuses_a_malformed_file_before_printing_the_url() {
    let home = TempHome::new();
    home.write_raw(b"{\"claudeAiOauth\": ");
    let before = home.state();
    let server = TokenServer::start();
    let out = login_without_paste(&home, &server).run();
    expect_refused_before_the_browser(&out, 78, &server);
    out.expect_untouched(&home.creds_path(), &before)
        .expect_stderr_contains(&home.creds_path().display().to_string())
        .expect_only_files(&home.claude_dir(), &allowed_siblings(".credentials.json"));
}

#[test]
fn login_refuses_a_directory_it_cannot_write_before_printing_the_url() {
    let server = TokenServer::start();
    // A directory no one can create files in, root included.
    let home = TempHome::new();
    let out = login_without_paste(&home, &server)
        .args([
            "--credentials",
            "/proc/claude-tokend-test/.credentials.json",
        ])
        .run();
    expect_refused_before_the_browser(&out, 78, &server);
    let out = login_without_paste(&home, &server)
        .args(["--credentials", "/proc/.credentials.json"])
        .run();
    expect_refused_before_the_browser(&out, 78, &server);
    out.expect_stderr_contains("/proc");

    // A directory the user cannot write in, where permissions apply (not to root).
    let home = TempHome::new();
    std::fs::create_dir(home.claude_dir()).unwrap();
    let mut perms = std::fs::metadata(home.claude_dir()).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o500);
    std::fs::set_permissions(home.claude_dir(), perms).unwrap();
    let probe = home.claude_dir().join("probe");
    if std::fs::write(&probe, b"").is_err() {
        let out = login_without_paste(&home, &server).run();
        expect_refused_before_the_browser(&out, 78, &server);
        out.expect_stderr_contains(&home.claude_dir().display().to_string());
    } else {
        let _ = std::fs::remove_file(&probe);
    }
    let mut perms = std::fs::metadata(home.claude_dir()).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o700);
    std::fs::set_permissions(home.claude_dir(), perms).unwrap();
}

#[test]
fn login_refuses_a_locked_keychain_before_printing_the_url() {
    let home = TempHome::new();
    std::fs::create_dir(home.claude_dir()).unwrap();
    let kc = claude_tokend_e2e::keychain::FakeKeychain::new(&home);
    kc.lock();
    let server = TokenServer::start();
    let out = kc
        .apply(login_without_paste(&home, &server))
        .args(["--store", "keychain"])
        .run();
    expect_refused_before_the_browser(&out, 75, &server);
    out.expect_stderr_contains("unlock");
}

#[test]
fn login_creates_a_missing_config_directory_0700_before_printing_the_url() {
    let home = TempHome::new();
    let dir = home.path().join("deep/new/claude");
    let server = TokenServer::start();
    let mut run = start_login_with(&home, &server, &[], &[("CLAUDE_CONFIG_DIR", &dir)]);
    let (code, state) = authorize(&mut run, &server, CC_SCOPES, MANUAL_REDIRECT);
    // The URL is out: the directory is there already, before anything was pasted.
    assert!(dir.is_dir(), "created before the browser step");
    assert_eq!(mode_of(&dir), 0o700);
    run.paste(&format!("{code}#{state}"));
    let out = run.finish();
    out.expect_code(0);
    out.check(dir.join(".credentials.json").is_file(), "saved there");
}
