//! Writes merged around another writer's changes, and blank (logged-out) tokens.

use super::*;

// ---------------------------------------------------------------------------------------------
// Merging around another writer

/// Claude Code changes an MCP token while our request is in flight (rewriting the file in
/// place, or by rename): the change survives our write, and our new tokens are in the file.
#[test]
fn an_mcp_oauth_change_made_during_our_request_survives_our_write() {
    for by_rename in [false, true] {
        let home = TempHome::new();
        let login = Login::due();
        home.write_creds(&login.doc());
        let server = TokenServer::for_login(&login);
        server.set_delay(Duration::from_millis(1500));
        let running = Cmd::new(&home).server(&server).arg("--once").spawn();
        await_requests(&server, 1);
        let mut theirs = home.read_creds();
        theirs["mcpOAuth"]["github|5f1c9a3e2b"]["accessToken"] =
            json!("mcp-access-rotated-by-claude-code");
        theirs["mcpOAuth"]["github|5f1c9a3e2b"]["expiresAt"] = json!(1_900_000_000_000i64);
        theirs["mcpOAuth"]["linear|0a1b2c3d4e"] = json!({
            "serverName": "linear",
            "serverUrl": "https://mcp.linear.example.test/sse",
            "accessToken": "mcp-linear-new-login",
            "expiresAt": 1_900_000_000_000i64
        });
        if by_rename {
            replace_atomically(&home.creds_path(), &theirs);
        } else {
            home.write_creds(&theirs);
        }
        let out = running.wait();
        let how = if by_rename { "by rename" } else { "in place" };
        out.expect_code(0)
            .check_eq("requests sent", server.count(), 1);
        let after = home.read_creds();
        out.check_eq(
            format!("mcpOAuth after a change {how} during the request"),
            &after["mcpOAuth"],
            &theirs["mcpOAuth"],
        )
        .check_eq(
            format!("everything but the owned fields (change made {how})"),
            without_owned(&after),
            without_owned(&theirs),
        );
        check_saved(&out, &home, &server);
        out.check_eq("mode", home.mode(), 0o600);
        expect_no_lock_dirs(&out, &home);
    }
}

/// Claude Code rotates the token while our request is in flight, and the server refuses ours as
/// spent: we find its token in the file, exit 0, and leave its write alone.
#[test]
fn invalid_grant_after_another_writer_rotated_the_token_ends_in_success() {
    for (command, by_rename) in [("--once", false), ("refresh", true)] {
        let home = TempHome::new();
        let login = Login::due();
        home.write_creds(&login.doc());
        let server = TokenServer::for_login(&login);
        server.push(Reply::invalid_grant().delay(Duration::from_millis(1500)));
        let running = Cmd::new(&home).server(&server).arg(command).spawn();
        await_requests(&server, 1);
        let other = Login::fresh();
        let mut doc = home.read_creds();
        doc["claudeAiOauth"]["accessToken"] = json!(other.access);
        doc["claudeAiOauth"]["refreshToken"] = json!(other.refresh);
        doc["claudeAiOauth"]["expiresAt"] = json!(other.expires_at);
        if by_rename {
            replace_atomically(&home.creds_path(), &doc);
        } else {
            home.write_creds(&doc);
        }
        let written = home.state();
        let out = running.wait();
        out.expect_code(0)
            .check_eq(format!("requests sent by {command}"), server.count(), 1)
            .check_eq(
                "the refresh token sent",
                server.requests()[0].refresh_token(),
                Some(login.refresh.as_str()),
            )
            .expect_untouched(&home.creds_path(), &written)
            .check_eq(
                "the other writer's refresh token is in the file",
                oauth(&home.read_creds()).get("refreshToken"),
                Some(&json!(other.refresh)),
            )
            .expect_no_secret(&other.secrets());
        expect_no_lock_dirs(&out, &home);
    }
}

// ---------------------------------------------------------------------------------------------
// Blank tokens: logged out

#[test]
fn blank_tokens_give_77_and_no_request() {
    for command in ["--once", "refresh"] {
        let home = TempHome::new();
        home.write_creds(&blank_doc());
        let server = TokenServer::start();
        let before = home.state();
        let out = Cmd::new(&home).server(&server).arg(command).run();
        out.expect_code(77)
            .check_eq(format!("requests sent by {command}"), server.count(), 0)
            .expect_stderr_contains("login")
            .expect_untouched(&home.creds_path(), &before);
        expect_no_lock_dirs(&out, &home);
    }
}

/// The daemon with blank tokens stays up, sends nothing, says so once (not again for every
/// change of the still-blank file), and refreshes once a login arrives.
#[test]
fn the_daemon_waits_quietly_for_a_login_when_tokens_are_blank() {
    let home = TempHome::new();
    let blank = blank_doc();
    home.write_creds(&blank);
    let server = TokenServer::start();
    let d = daemon(&home, &server).spawn();
    std::thread::sleep(Duration::from_millis(800));
    // Claude Code keeps writing the file (MCP tokens) while logged out.
    for i in 0..4 {
        let mut doc = blank.clone();
        doc["unknownTopLevel"]["counter"] = json!(i);
        if i % 2 == 0 {
            replace_atomically(&home.creds_path(), &doc);
        } else {
            home.write_creds(&doc);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let last_blank = home.state();
    std::thread::sleep(Duration::from_millis(1000));
    assert!(is_running(&d), "blank tokens do not stop the daemon");
    assert_eq!(server.count(), 0, "a request was sent with blank tokens");
    assert!(
        home.state() == last_blank,
        "the daemon rewrote the logged-out file"
    );

    // A login arrives.
    let login = Login::expiring_in(-60);
    server.accept_refresh(&login.refresh);
    replace_atomically(&home.creds_path(), &login.doc());
    assert!(
        wait_until(SOON, || saved_latest(&home, &server)),
        "refreshed once a login arrived"
    );
    let out = stop(d);
    out.check_eq("requests sent", server.count(), 1);
    let before_login: String = out
        .stderr
        .lines()
        .take_while(|l| !l.contains("refreshing"))
        .map(|l| format!("{l}\n"))
        .collect();
    let n = lines_with(&before_login, "login");
    out.check(
        (1..=2).contains(&n),
        format!("while logged out, {n} log lines mentioned the login (want 1, at most 2)"),
    );
    expect_no_lock_dirs(&out, &home);
}
