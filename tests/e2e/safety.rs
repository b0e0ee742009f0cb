//! The safety promises: one request for many concurrent runs, symlinks kept, mode 0600, no
//! token in any output at any log level, and outside changes made during a request kept.

use std::os::unix::fs::symlink;
use std::time::{Duration, Instant};

use claude_tokend_e2e::*;
use serde_json::json;

#[test]
fn eight_concurrent_once_runs_send_one_request() {
    let home = TempHome::new();
    let login = Login::due();
    home.write_creds(&login.doc());
    let server = TokenServer::for_login(&login);
    server.set_delay(Duration::from_millis(300));
    let running: Vec<Running> = (0..8)
        .map(|_| Cmd::new(&home).server(&server).arg("--once").spawn())
        .collect();
    let outs: Vec<Out> = running.into_iter().map(Running::wait).collect();
    for out in &outs {
        out.expect_code(0).expect_silent();
    }
    outs[0].check_eq("requests sent by 8 concurrent runs", server.count(), 1);
    outs[0].check_eq(
        "accessToken",
        oauth(&home.read_creds()).get("accessToken"),
        Some(&json!(server.last_issued().access)),
    );
    outs[0].expect_only_files(&home.claude_dir(), &allowed_siblings(".credentials.json"));
}

#[test]
fn a_symlinked_file_stays_a_symlink_and_its_target_is_rewritten() {
    let home = TempHome::new();
    let login = Login::due();
    let doc = login.doc();
    let target = home.path().join("dotfiles").join("claude-credentials.json");
    write_creds_at(&target, &doc);
    std::fs::create_dir(home.claude_dir()).expect("mkdir .claude");
    let link_text = std::path::Path::new("../dotfiles/claude-credentials.json");
    symlink(link_text, home.creds_path()).expect("symlink");
    let server = TokenServer::for_login(&login);

    let out = Cmd::new(&home).server(&server).arg("--once").run();
    out.expect_code(0)
        .expect_silent()
        .check_eq("requests sent", server.count(), 1);
    let meta = std::fs::symlink_metadata(home.creds_path()).expect("lstat");
    out.check(
        meta.file_type().is_symlink(),
        "the credentials path is no longer a symlink",
    );
    out.check_eq(
        "link text",
        std::fs::read_link(home.creds_path()).expect("readlink"),
        link_text.to_path_buf(),
    );
    let written = read_json(&target);
    out.check_eq(
        "accessToken in the link's target",
        oauth(&written).get("accessToken"),
        Some(&json!(server.last_issued().access)),
    );
    out.check_eq(
        "the rest of the target",
        without_owned(&written),
        without_owned(&doc),
    );
    out.check_eq("target mode", mode_of(&target), 0o600);
    out.expect_only_files(&home.claude_dir(), &[".credentials.json".to_owned()]);
    out.expect_only_files(
        &home.path().join("dotfiles"),
        &allowed_siblings("claude-credentials.json"),
    );
}

#[test]
fn a_rewritten_file_has_mode_0600() {
    let home = TempHome::new();
    let login = Login::due();
    home.write_creds(&login.doc());
    std::fs::set_permissions(
        home.creds_path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .expect("chmod");
    let server = TokenServer::for_login(&login);
    let out = Cmd::new(&home).server(&server).arg("--once").run();
    out.expect_code(0)
        .check_eq("requests sent", server.count(), 1)
        .check_eq("file mode after the rewrite", home.mode(), 0o600);
}

#[test]
fn no_whole_token_in_any_output_at_trace_level() {
    // Success, through --once and refresh, at RUST_LOG=trace and at -vvv.
    for (command, level) in [
        ("--once", Some("trace")),
        ("refresh", Some("trace")),
        ("refresh", None),
    ] {
        let home = TempHome::new();
        let login = Login::due();
        home.write_creds(&login.doc());
        let server = TokenServer::for_login(&login);
        let mut cmd = Cmd::new(&home).server(&server).arg(command);
        cmd = match level {
            Some(l) => cmd.env("RUST_LOG", l),
            None => cmd.arg("-vvv"),
        };
        let out = cmd.run();
        out.expect_code(0)
            .check_eq("requests sent", server.count(), 1);
        let issued = server.last_issued();
        let mut secrets = login.secrets();
        secrets.push(issued.access);
        secrets.extend(issued.refresh);
        out.check(!out.stderr.is_empty(), "trace level logged nothing")
            .expect_no_secret(&secrets);
    }
}

#[test]
fn no_whole_token_in_output_when_the_server_echoes_it() {
    let login = Login::due();
    let echo = |status: u16| {
        Reply::json(
            status,
            &json!({
                "error": "invalid_grant",
                "error_description": format!("refresh token {} was revoked", login.refresh),
                "request": {"refresh_token": login.refresh}
            }),
        )
    };
    for (status, code) in [(400, 77), (500, 75)] {
        let home = TempHome::new();
        home.write_creds(&login.doc());
        let server = TokenServer::start();
        server.always(echo(status));
        let out = Cmd::new(&home)
            .server(&server)
            .env("RUST_LOG", "trace")
            .args(["--once", "--retry-budget", "2s"])
            .run();
        out.expect_code(code).expect_no_secret(&login.secrets());
    }
}

#[test]
fn no_whole_token_in_status_output_at_trace_level() {
    let home = TempHome::new();
    let login = Login::fresh();
    home.write_creds(&login.doc());
    for json_flag in [false, true] {
        let mut cmd = Cmd::new(&home).env("RUST_LOG", "trace").arg("status");
        if json_flag {
            cmd = cmd.arg("--json");
        }
        let out = cmd.run();
        out.expect_code(0).expect_no_secret(&login.secrets());
    }
}

#[test]
fn an_outside_change_during_the_request_is_kept() {
    // Claude Code adds an MCP token while our request is in flight: the write must merge into
    // the file as it is then, not overwrite it with the copy read before the request.
    let home = TempHome::new();
    let login = Login::due();
    home.write_creds(&login.doc());
    let server = TokenServer::for_login(&login);
    server.set_delay(Duration::from_millis(1500));
    let running = Cmd::new(&home).server(&server).arg("--once").spawn();
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.count() == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut changed = home.read_creds();
    changed["mcpOAuth"]["github|5f1c9a3e2b"]["accessToken"] = json!("mcp-access-rotated-by-claude");
    changed["mcpOAuth"]["linear|77aa"] = json!({"serverName": "linear", "accessToken": "mcp-new"});
    changed["claudeAiOauth"]["subscriptionType"] = json!("team");
    let tmp = home.claude_dir().join(".credentials.json.tmp.claude-code");
    write_creds_at(&tmp, &changed);
    std::fs::rename(&tmp, home.creds_path()).expect("rename");
    let out = running.wait();
    out.expect_code(0)
        .check_eq("requests sent", server.count(), 1);
    let after = home.read_creds();
    out.check_eq(
        "accessToken",
        oauth(&after).get("accessToken"),
        Some(&json!(server.last_issued().access)),
    );
    out.check_eq(
        "the outside change (everything but the owned fields)",
        without_owned(&after),
        without_owned(&changed),
    );
}
