//! `security -i`: one command per line with SecurityTool's quoting, the log of what ran, and
//! lines past 4095 bytes cut where `security` cuts them.

use super::*;

#[test]
fn interactive_mode_runs_one_command_per_line_with_shell_quoting() {
    let home = TempHome::new();
    let kc = FakeKeychain::new(&home);
    let input = concat!(
        "add-generic-password -a \"me too\" -s 'single quoted' -w \"a \\\"quoted\\\" value\"\n",
        "add-generic-password -a bare\\ word -s svc -w 'it\\'s'\n",
        "find-generic-password -a nobody -s svc -w\n",
    );
    let o = sec_i(&kc, input.as_bytes());
    assert_eq!(code(&o), 44, "the status of the last command");
    assert_eq!(
        kc.raw("single quoted", "me too").unwrap(),
        b"a \"quoted\" value"
    );
    assert_eq!(kc.raw("svc", "bare word").unwrap(), b"it's");
    assert!(
        stderr(&o).contains("returned 44"),
        "security -i reports a failing command: {}",
        stderr(&o)
    );
    assert!(
        !stderr(&o).contains("security> "),
        "no prompt without a terminal"
    );
    // A failure followed by a success: the status is the last one's.
    let o = sec_i(&kc, b"find-generic-password -a nobody -s svc -w\nfind-generic-password -a \"bare word\" -s svc -w\n");
    assert_eq!(code(&o), 0);
    assert_eq!(stdout(&o), "it's\n");
    // A last line without a newline is never run (security's readline returns EOF).
    let o = sec_i(&kc, b"delete-generic-password -a \"bare word\" -s svc");
    assert_eq!(code(&o), 0);
    assert!(kc.raw("svc", "bare word").is_some());
    assert_eq!(
        kc.commands().last().map(|c| c[0].clone()),
        Some("find-generic-password".to_owned())
    );
}

#[test]
fn the_log_records_argv_stdin_lines_commands_and_results() {
    let home = TempHome::new();
    let kc = FakeKeychain::new(&home);
    let line = stdin_line("svc", "me", b"{\"k\":\"v\"}");
    sec_i(&kc, format!("{line}\n").as_bytes());
    sec(
        &kc,
        &["find-generic-password", "-a", "me", "-s", "svc", "-w"],
    );
    check_eq(
        "argv",
        kc.argv_calls(),
        vec![
            vec!["-i".to_owned()],
            ["find-generic-password", "-a", "me", "-s", "svc", "-w"]
                .map(String::from)
                .to_vec(),
        ],
    );
    check_eq("stdin lines", kc.stdin_lines(), vec![line]);
    let cmds = kc.commands();
    check_eq("commands run", cmds.len(), 2);
    check_eq(
        "-X",
        option_value(&cmds[0], "-X"),
        Some(to_hex(b"{\"k\":\"v\"}").as_str()),
    );
    check_eq("results", kc.results(), vec![0, 0]);
    check_eq("writes", kc.writes().len(), 1);
}

/// A contract `-i` line of exactly `total` bytes for the item ("svc", `account`), and the value
/// it carries.
fn long_line(account: &str, total: usize) -> (String, Vec<u8>) {
    let prefix = stdin_line("svc", account, b"");
    // The prefix ends with `-X ""`: the hex goes between the quotes.
    let hex_len = total - prefix.len();
    assert_eq!(hex_len % 2, 0, "pick an even hex length");
    let value: Vec<u8> = (0..hex_len / 2).map(|i| b'a' + (i % 26) as u8).collect();
    let line = stdin_line("svc", account, &value);
    assert_eq!(line.len(), total);
    (line, value)
}

/// An even-hex total length near `near` for `account`.
fn total_near(account: &str, near: usize) -> usize {
    let prefix_len = stdin_line("svc", account, b"").len();
    if (near - prefix_len).is_multiple_of(2) {
        near
    } else {
        near + 1
    }
}

#[test]
fn a_line_longer_than_4095_bytes_is_cut_and_its_rest_runs_as_another_command() {
    // About 5000 bytes: the first 4095 run as a command with a truncated -X, the rest as
    // garbage. The two account lengths put an odd and an even number of hex digits in the first
    // piece.
    let mut parities = Vec::new();
    for account in ["me", "mee"] {
        let prefix_len = stdin_line("svc", account, b"").len();
        let home = TempHome::new();
        let kc = FakeKeychain::new(&home);
        kc.put("svc", account, &json!({"old": true}));
        let (line, value) = long_line(account, total_near(account, 5000));
        let o = sec_i(&kc, format!("{line}\n").as_bytes());
        let lines = kc.stdin_lines();
        check_eq("pieces read", lines.len(), 2);
        check_eq("first piece", lines[0].len(), SECURITY_LINE_BUFFER);
        check_eq(
            "first piece's bytes",
            lines[0].as_str(),
            &line[..SECURITY_LINE_BUFFER],
        );
        check_eq(
            "second piece",
            lines[1].as_str(),
            &line[SECURITY_LINE_BUFFER..],
        );
        assert_ne!(code(&o), 0, "the garbage rest fails: {}", stderr(&o));
        check_eq("the last result", kc.results().last().copied(), Some(1));
        let stored = kc.raw("svc", account).unwrap();
        assert_ne!(
            stored, value,
            "a cut line must not store the intended value"
        );
        // An odd number of hex digits in the first piece is refused; an even one stores a
        // truncated value.
        let cut_hex = SECURITY_LINE_BUFFER - (prefix_len - 1);
        parities.push(cut_hex % 2);
        if cut_hex.is_multiple_of(2) {
            check_eq("truncated value", stored, value[..cut_hex / 2].to_vec());
        } else {
            check_eq("unchanged value", stored, b"{\"old\":true}".to_vec());
        }
    }
    parities.sort();
    check_eq("both parities tried", parities, vec![0, 1]);
}

#[test]
fn a_cut_that_leaves_only_the_closing_quote_runs_help() {
    // A line of 4096 bytes whose last byte is the closing quote: the first 4095 bytes hold the
    // whole -X value (an unclosed quote ends at the end of the piece), and the rest, `"`, is one
    // empty word, which names `help` (commands match by prefix) and succeeds.
    let account = if total_near("me", 4096) == 4096 {
        "me"
    } else {
        "mee"
    };
    let home = TempHome::new();
    let kc = FakeKeychain::new(&home);
    let (line, value) = long_line(account, 4096);
    let o = sec_i(&kc, format!("{line}\n").as_bytes());
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    check_eq(
        "stdin pieces",
        kc.stdin_lines(),
        vec![line[..4095].to_owned(), "\"".to_owned()],
    );
    check_eq("commands", kc.commands().len(), 2);
    check_eq("the second", kc.commands()[1].clone(), vec![String::new()]);
    assert!(
        stdout(&o).contains("add-generic-password"),
        "help lists the commands"
    );
    check_eq("stored", kc.raw("svc", account), Some(value));
}

#[test]
fn a_line_of_4095_bytes_still_fits() {
    let account = if total_near("me", 4095) == 4095 {
        "me"
    } else {
        "mee"
    };
    let prefix_len = stdin_line("svc", account, b"").len();
    let home = TempHome::new();
    let kc = FakeKeychain::new(&home);
    let (line, value) = long_line(account, 4095);
    let o = sec_i(&kc, format!("{line}\n").as_bytes());
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    check_eq("stored", kc.raw("svc", account), Some(value));
    // Exactly 4095 bytes fill the buffer, so the newline is read as a second, empty line (which
    // runs nothing and succeeds).
    check_eq("pieces", kc.stdin_lines(), vec![line, String::new()]);
    // A value of 6000 bytes as argv is never cut.
    let (_, big) = long_line(account, prefix_len + 2 * 6000);
    let o = sec(
        &kc,
        &[
            "add-generic-password",
            "-U",
            "-a",
            account,
            "-s",
            "svc",
            "-X",
            &to_hex(&big),
        ],
    );
    assert_eq!(code(&o), 0);
    check_eq("stored as argv", kc.raw("svc", account), Some(big));
}
