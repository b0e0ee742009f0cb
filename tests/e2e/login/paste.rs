//! Reading the paste: an empty one asks again (up to end of input or a few tries), and one
//! past 64 KiB is refused before any request.

use super::*;

#[test]
fn an_empty_paste_asks_again() {
    let home = TempHome::new();
    let server = TokenServer::start();
    let mut run = start_login(&home, &server, &[]);
    let (code, state) = authorize(&mut run, &server, CC_SCOPES, MANUAL_REDIRECT);
    run.paste("");
    run.paste("   ");
    run.paste(&format!("{code}#{state}"));
    let out = run.finish();
    out.expect_code(0);
    out.check_eq("one exchange", server.count(), 1);
    out.check(
        out.stderr.matches("(CODE#STATE)").count() == 3,
        "asked three times",
    );
}

#[test]
fn empty_pastes_end_at_end_of_input_or_after_a_few_tries() {
    // End of input after one empty line.
    let home = TempHome::new();
    let server = TokenServer::start();
    let mut run = start_login(&home, &server, &[]);
    authorize(&mut run, &server, CC_SCOPES, MANUAL_REDIRECT);
    run.paste("");
    let out = run.finish();
    out.expect_code(1)
        .expect_stderr_contains("nothing was sent")
        .check_eq("requests", server.count(), 0);

    // A stream of empty lines (`yes ''`) does not keep it asking for ever.
    let home = TempHome::new();
    let server = TokenServer::start();
    let mut run = start_login(&home, &server, &[]);
    authorize(&mut run, &server, CC_SCOPES, MANUAL_REDIRECT);
    // It stops reading after a few, so the rest of this write may find the pipe closed.
    let stdin = run.child.stdin.as_mut().expect("stdin");
    let _ = stdin.write_all("\n".repeat(50).as_bytes());
    let out = run.finish();
    out.expect_code(1)
        .expect_stderr_contains("nothing was sent")
        .check_eq("requests", server.count(), 0);
}

#[test]
fn a_paste_longer_than_64_kib_is_refused_before_any_request() {
    let home = TempHome::new();
    let server = TokenServer::start();
    let mut run = start_login(&home, &server, &[]);
    let (code, state) = authorize(&mut run, &server, CC_SCOPES, MANUAL_REDIRECT);
    // It stops reading past the limit, so the rest of this write may find the pipe closed.
    let stdin = run.child.stdin.as_mut().expect("stdin");
    let _ = writeln!(stdin, "{code}{}#{state}", "x".repeat(65 * 1024));
    let out = run.finish();
    out.expect_code(1)
        .expect_stderr_contains("64 KiB")
        .check_eq("requests", server.count(), 0);
    out.check(!home.creds_path().exists(), "nothing saved");
}
