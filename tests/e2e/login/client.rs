//! The client a login was made with: `login --client-id X` (or `ANTHROPIC_CLIENT_ID=X`) stores
//! `clientId` in the login, as Claude Code does, so later refreshes use X with no setting at all.
//! A login with the default client stores none (Claude Code 2.1.332 writes `clientId` only for a
//! client it was given).

use super::*;

#[test]
fn a_login_with_another_client_id_stores_it_and_later_refreshes_use_it() {
    let id = "0f0e0d0c-aaaa-4bbb-8ccc-custom-client";
    for by_env in [false, true] {
        let how = if by_env {
            "ANTHROPIC_CLIENT_ID"
        } else {
            "--client-id"
        };
        let home = TempHome::new();
        let server = TokenServer::start();
        let mut run = if by_env {
            start_login_with(
                &home,
                &server,
                &[],
                &[("ANTHROPIC_CLIENT_ID", std::path::Path::new(id))],
            )
        } else {
            start_login(&home, &server, &["--client-id", id])
        };
        let (code, state) = authorize_for(&mut run, &server, CC_SCOPES, MANUAL_REDIRECT, id);
        run.paste(&format!("{code}#{state}"));
        let out = run.finish();
        out.expect_code(0);
        out.check_eq(
            format!("{how}: the exchange's client_id"),
            server.requests()[0].body["client_id"].as_str(),
            Some(id),
        );
        let doc = home.read_creds();
        out.check_eq(
            format!("{how}: clientId stored with the login"),
            doc["claudeAiOauth"]["clientId"].as_str(),
            Some(id),
        );

        // A later refresh, with neither the flag nor the variable: the login's own client.
        let out = Cmd::new(&home).server(&server).arg("refresh").run();
        out.expect_code(0);
        let requests = server.requests();
        out.check_eq("the login, then the refresh", requests.len(), 2);
        out.check_eq(
            format!("{how}: the refresh's client_id"),
            requests[1].body["client_id"].as_str(),
            Some(id),
        );
        out.check_eq(
            format!("{how}: clientId kept by the refresh"),
            home.read_creds()["claudeAiOauth"]["clientId"].as_str(),
            Some(id),
        );
    }
}

#[test]
fn a_login_with_the_default_client_stores_no_client_id() {
    let home = TempHome::new();
    let server = TokenServer::start();
    let mut run = start_login(&home, &server, &[]);
    let (code, state) = authorize(&mut run, &server, CC_SCOPES, MANUAL_REDIRECT);
    run.paste(&format!("{code}#{state}"));
    let out = run.finish();
    out.expect_code(0);
    out.check(
        home.read_creds()["claudeAiOauth"].get("clientId").is_none(),
        "no clientId for the default client, as Claude Code writes none",
    );
}

/// A refresh whose client the server refuses is a setting to fix, not a login to redo (exit 1,
/// CONTRACT.md "Commands and exit codes"), in Anthropic's nested error shape as in the flat one;
/// an `invalid_grant`, in either shape, still means a new login is needed (77).
#[test]
fn a_refresh_refused_for_its_client_exits_1_in_either_error_shape() {
    let cases = [
        (json!({"error": "invalid_client"}), 1),
        (
            json!({"type": "error", "error": {"type": "invalid_client", "message": "Client not found"}}),
            1,
        ),
        (
            json!({"type": "error", "error": {"type": "invalid_grant", "message": "Refresh token not found or invalid"}}),
            77,
        ),
    ];
    for (body, want) in cases {
        let home = TempHome::new();
        let login = Login::due();
        home.write_creds(&login.doc());
        let server = TokenServer::for_login(&login);
        server.push(Reply::json(400, &body));
        let out = Cmd::new(&home).server(&server).arg("refresh").run();
        out.check_eq(format!("{body}: exit code"), out.code, want);
        if want == 1 {
            out.expect_stderr_contains("invalid_client")
                .expect_stderr_contains(&format!("`{CLIENT_ID}`"))
                .check(
                    !out.stderr.contains("new login is needed"),
                    "a new login is not asked for",
                );
        }
    }
}
