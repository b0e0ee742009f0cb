//! The fake `security` itself: that it behaves as the contract (and Apple's SecurityTool) says,
//! so the Keychain suite tests the program against something faithful. These pass on their own,
//! whatever state the program is in.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use claude_tokend_e2e::keychain::*;
use claude_tokend_e2e::*;
use serde_json::json;

fn run(mut c: Command, args: &[&str], stdin: Option<&[u8]>) -> Output {
    c.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("starting the fake security");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input)
            .expect("writing to security -i");
    }
    child
        .wait_with_output()
        .expect("waiting for the fake security")
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn sec(kc: &FakeKeychain, args: &[&str]) -> Output {
    run(kc.security(), args, None)
}

fn sec_i(kc: &FakeKeychain, input: &[u8]) -> Output {
    run(kc.security(), &["-i"], Some(input))
}

#[test]
fn cargo_builds_the_fake_the_harness_uses() {
    let built = std::fs::canonicalize(env!("CARGO_BIN_EXE_fake-security")).unwrap();
    let found = std::fs::canonicalize(fake_security_bin()).unwrap();
    assert_eq!(built, found);
}

#[test]
fn plain_values_round_trip_and_print_as_text() {
    let home = TempHome::new();
    let kc = FakeKeychain::new(&home);
    let value = r#"{"claudeAiOauth":{"accessToken":"sk-ant-oat01-abc"}}"#;
    let o = sec(
        &kc,
        &["add-generic-password", "-a", "me", "-s", "svc", "-w", value],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    // Flags in any order.
    let o = sec(
        &kc,
        &["find-generic-password", "-w", "-s", "svc", "-a", "me"],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(stdout(&o), format!("{value}\n"));
    let o = sec(
        &kc,
        &["find-generic-password", "-a", "me", "-w", "-s", "svc"],
    );
    assert_eq!(stdout(&o), format!("{value}\n"));
    assert_eq!(kc.raw("svc", "me").unwrap(), value.as_bytes());
}

#[test]
fn non_printable_values_print_as_lowercase_hex_and_x_takes_hex() {
    let home = TempHome::new();
    let kc = FakeKeychain::new(&home);
    for value in [
        "{\n  \"a\": 1\n}".as_bytes().to_vec(),
        "{\"name\":\"Zoë\"}".as_bytes().to_vec(),
        vec![0x00, 0xff, b'A'],
        b"tab\there".to_vec(),
    ] {
        let hex = to_hex(&value);
        let o = sec(
            &kc,
            &[
                "add-generic-password",
                "-U",
                "-a",
                "me",
                "-s",
                "svc",
                "-X",
                &hex.to_uppercase(),
            ],
        );
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        assert_eq!(kc.raw("svc", "me").unwrap(), value);
        let o = sec(
            &kc,
            &["find-generic-password", "-a", "me", "-s", "svc", "-w"],
        );
        assert_eq!(stdout(&o), format!("{hex}\n"), "hex of {value:?}");
    }
    // Printable ASCII (0x20..=0x7e, space and tilde included) prints as itself.
    let o = sec(
        &kc,
        &[
            "add-generic-password",
            "-U",
            "-a",
            "me",
            "-s",
            "svc",
            "-X",
            &to_hex(b" ok~ "),
        ],
    );
    assert_eq!(code(&o), 0);
    let o = sec(
        &kc,
        &["find-generic-password", "-a", "me", "-s", "svc", "-w"],
    );
    assert_eq!(stdout(&o), " ok~ \n");
    // Bad hex is refused and changes nothing.
    let o = sec(
        &kc,
        &[
            "add-generic-password",
            "-U",
            "-a",
            "me",
            "-s",
            "svc",
            "-X",
            "abc",
        ],
    );
    assert_ne!(code(&o), 0);
    assert_eq!(kc.raw("svc", "me").unwrap(), b" ok~ ");
}

#[test]
fn missing_items_exit_44_duplicates_45_and_u_updates() {
    let home = TempHome::new();
    let kc = FakeKeychain::new(&home);
    let o = sec(
        &kc,
        &["find-generic-password", "-a", "me", "-s", "svc", "-w"],
    );
    assert_eq!(code(&o), 44);
    assert_eq!(stdout(&o), "");
    assert!(
        stderr(&o).contains(
            "security: SecKeychainSearchCopyNext: The specified item could not be found in the keychain."
        ),
        "{}",
        stderr(&o)
    );
    let o = sec(&kc, &["delete-generic-password", "-a", "me", "-s", "svc"]);
    assert_eq!(code(&o), 44);

    let o = sec(
        &kc,
        &["add-generic-password", "-a", "me", "-s", "svc", "-w", "one"],
    );
    assert_eq!(code(&o), 0);
    let o = sec(
        &kc,
        &["add-generic-password", "-a", "me", "-s", "svc", "-w", "two"],
    );
    assert_eq!(code(&o), 45, "{}", stderr(&o));
    assert!(stderr(&o).contains("already exists"));
    assert_eq!(kc.raw("svc", "me").unwrap(), b"one");
    let o = sec(
        &kc,
        &[
            "add-generic-password",
            "-U",
            "-a",
            "me",
            "-s",
            "svc",
            "-w",
            "two",
        ],
    );
    assert_eq!(code(&o), 0);
    assert_eq!(kc.raw("svc", "me").unwrap(), b"two");

    // Items are keyed by (service, account).
    kc.put("svc", "other", &json!({"x": 1}));
    kc.put("svc-2", "me", &json!({"y": 2}));
    let o = sec(&kc, &["delete-generic-password", "-a", "me", "-s", "svc"]);
    assert_eq!(code(&o), 0);
    assert_eq!(kc.raw("svc", "me"), None);
    assert_eq!(kc.get("svc", "other"), Some(json!({"x": 1})));
    assert_eq!(kc.get("svc-2", "me"), Some(json!({"y": 2})));
}

#[test]
fn a_locked_keychain_exits_36_for_every_item_command_until_unlocked() {
    let home = TempHome::new();
    let kc = FakeKeychain::new(&home);
    kc.put("svc", "me", &json!({"a": 1}));
    let before = kc.db_bytes();
    kc.lock();
    for args in [
        vec!["find-generic-password", "-a", "me", "-s", "svc", "-w"],
        vec!["find-generic-password", "-a", "me", "-s", "svc"],
        vec![
            "add-generic-password",
            "-U",
            "-a",
            "me",
            "-s",
            "svc",
            "-w",
            "x",
        ],
        vec!["delete-generic-password", "-a", "me", "-s", "svc"],
    ] {
        let o = sec(&kc, &args);
        assert_eq!(code(&o), 36, "{args:?}: {}", stderr(&o));
        assert_eq!(stdout(&o), "", "{args:?} printed something");
        assert!(
            !stderr(&o).contains("unlock"),
            "the real one does not say how to unlock"
        );
    }
    // Through -i too, toggled between runs.
    let line = stdin_line("svc", "me", b"{\"a\":2}");
    let o = sec_i(&kc, format!("{line}\n").as_bytes());
    assert_eq!(code(&o), 36);
    assert_eq!(kc.db_bytes(), before, "nothing written while locked");
    kc.unlock();
    let o = sec_i(&kc, format!("{line}\n").as_bytes());
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(kc.get("svc", "me"), Some(json!({"a": 2})));
}

#[test]
fn failing_writes_exit_1_and_change_nothing() {
    let home = TempHome::new();
    let kc = FakeKeychain::new(&home);
    kc.put("svc", "me", &json!({"a": 1}));
    let before = kc.db_bytes();
    kc.fail_writes(true);
    let o = sec(
        &kc,
        &[
            "add-generic-password",
            "-U",
            "-a",
            "me",
            "-s",
            "svc",
            "-w",
            "x",
        ],
    );
    assert_eq!(code(&o), 1);
    let o = sec(&kc, &["delete-generic-password", "-a", "me", "-s", "svc"]);
    assert_eq!(code(&o), 1);
    let o = sec(
        &kc,
        &["find-generic-password", "-a", "me", "-s", "svc", "-w"],
    );
    assert_eq!(code(&o), 0, "reads still work");
    assert_eq!(kc.db_bytes(), before);
    kc.fail_writes(false);
    let o = sec(
        &kc,
        &[
            "add-generic-password",
            "-U",
            "-a",
            "me",
            "-s",
            "svc",
            "-w",
            "x",
        ],
    );
    assert_eq!(code(&o), 0);
}

#[test]
fn wrong_invocations_are_refused() {
    let home = TempHome::new();
    let kc = FakeKeychain::new(&home);
    kc.put("svc", "me", &json!({"a": 1}));
    let before = kc.db_bytes();
    for (args, want) in [
        (vec!["no-such-command"], 1),
        (
            vec!["find-generic-password", "-a", "me", "-s", "svc", "-z"],
            2,
        ),
        (vec!["find-generic-password", "-a"], 2),
        (
            vec!["add-generic-password", "-U", "-a", "me", "-s", "svc"],
            2,
        ),
        (
            vec!["add-generic-password", "-U", "-s", "svc", "-w", "x"],
            2,
        ),
        (
            vec![
                "add-generic-password",
                "-U",
                "-a",
                "me",
                "-s",
                "svc",
                "-T",
                "",
                "-w",
                "x",
            ],
            2,
        ),
        (
            vec![
                "add-generic-password",
                "-U",
                "-a",
                "me",
                "-s",
                "svc",
                "-w",
                "x",
                "/other.keychain",
            ],
            2,
        ),
        (vec!["-Z"], 2),
        (vec![], 2),
    ] {
        let o = sec(&kc, &args);
        assert_eq!(code(&o), want, "{args:?}: {}{}", stdout(&o), stderr(&o));
    }
    assert_eq!(kc.db_bytes(), before);
    // Prefixes name commands, as in the real one.
    let o = sec(&kc, &["find-generic", "-a", "me", "-s", "svc", "-w"]);
    assert_eq!(code(&o), 0);
    assert_eq!(stdout(&o), "{\"a\":1}\n");
}

#[test]
fn the_attribute_listing_names_the_keychain_file_and_mdat() {
    let home = TempHome::new();
    let kc = FakeKeychain::new(&home);
    kc.put("Claude Code-credentials", "me", &json!({"a": 1}));
    let o = sec(
        &kc,
        &[
            "find-generic-password",
            "-a",
            "me",
            "-s",
            "Claude Code-credentials",
        ],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let text = stdout(&o);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        format!("keychain: \"{}\"", kc.db_path().display())
    );
    assert!(lines.contains(&"version: 512"), "{text}");
    assert!(lines.contains(&"class: \"genp\""), "{text}");
    assert!(lines.contains(&"attributes:"), "{text}");
    assert!(lines.contains(&"    \"acct\"<blob>=\"me\""), "{text}");
    assert!(
        lines.contains(&"    \"svce\"<blob>=\"Claude Code-credentials\""),
        "{text}"
    );
    let mdat = lines
        .iter()
        .find(|l| l.trim_start().starts_with("\"mdat\"<timedate>=0x"))
        .unwrap_or_else(|| panic!("no mdat line: {text}"));
    // "mdat"<timedate>=0x<hex of the string and a NUL>  "yyyymmddhhmmssZ\000"
    let (hex, quoted) = mdat
        .trim_start()
        .trim_start_matches("\"mdat\"<timedate>=0x")
        .split_once("  ")
        .unwrap();
    let stamp = quoted
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix("\\000\""))
        .unwrap_or_else(|| panic!("{quoted}"));
    assert_eq!(stamp.len(), 15, "{stamp}");
    assert!(stamp.ends_with('Z') && stamp[..14].bytes().all(|b| b.is_ascii_digit()));
    let mut want = stamp.as_bytes().to_vec();
    want.push(0);
    assert_eq!(hex, to_hex(&want).to_uppercase());
    // It is now (UTC), to the second.
    let now = now_ms() / 1000;
    let year: i64 = stamp[..4].parse().unwrap();
    assert_eq!(year, 1970 + now / 31_556_952, "{stamp}");
}

#[test]
fn every_write_moves_the_database_and_mdat() {
    let home = TempHome::new();
    let kc = FakeKeychain::new(&home);
    kc.put("svc", "me", &json!({"a": 1}));
    let (m0, d0) = (kc.mdat("svc", "me").unwrap(), kc.db_mtime());
    std::thread::sleep(Duration::from_millis(1100));
    let o = sec_i(
        &kc,
        format!("{}\n", stdin_line("svc", "me", b"{}")).as_bytes(),
    );
    assert_eq!(code(&o), 0);
    let (m1, d1) = (kc.mdat("svc", "me").unwrap(), kc.db_mtime());
    assert!(m1 > m0, "mdat {m0} -> {m1}");
    assert!(d1 > d0, "the database file's mtime did not move");
    // Even the same value again rewrites the file.
    std::thread::sleep(Duration::from_millis(20));
    let o = sec_i(
        &kc,
        format!("{}\n", stdin_line("svc", "me", b"{}")).as_bytes(),
    );
    assert_eq!(code(&o), 0);
    assert!(kc.db_mtime() > d1);
    // Reads do not.
    let d2 = kc.db_mtime();
    let o = sec(
        &kc,
        &["find-generic-password", "-a", "me", "-s", "svc", "-w"],
    );
    assert_eq!(code(&o), 0);
    assert_eq!(kc.db_mtime(), d2);
}

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

#[test]
fn concurrent_writers_lose_no_update() {
    let home = TempHome::new();
    let kc = FakeKeychain::new(&home);
    let rounds = 15;
    let children: Vec<_> = (0..8)
        .map(|w| {
            let mut input = String::new();
            for r in 0..rounds {
                input.push_str(&stdin_line(
                    "svc",
                    &format!("writer-{w}"),
                    format!("{r}").as_bytes(),
                ));
                input.push('\n');
                input.push_str(&stdin_line("shared", "all", format!("{w}-{r}").as_bytes()));
                input.push('\n');
            }
            let mut c = kc.security();
            c.arg("-i")
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            let mut child = c.spawn().unwrap();
            let mut stdin = child.stdin.take().unwrap();
            std::thread::spawn(move || stdin.write_all(input.as_bytes()).unwrap());
            child
        })
        .collect();
    for c in children {
        let o = c.wait_with_output().unwrap();
        assert_eq!(code(&o), 0, "{}", stderr(&o));
    }
    for w in 0..8 {
        check_eq(
            format!("writer-{w}'s last value"),
            kc.raw("svc", &format!("writer-{w}")),
            Some(format!("{}", rounds - 1).into_bytes()),
        );
    }
    check_eq("items", kc.item_names().len(), 9);
    let shared = String::from_utf8(kc.raw("shared", "all").unwrap()).unwrap();
    assert!(shared.ends_with(&format!("-{}", rounds - 1)), "{shared}");
    check_eq("commands logged", kc.commands().len(), 8 * rounds * 2);
    let leftovers: Vec<String> = list_names(kc.db_path().parent().unwrap())
        .into_iter()
        .filter(|n| n.contains(".tmp."))
        .collect();
    check_eq("temp files left", leftovers, Vec::<String>::new());
}

#[test]
fn the_naming_rules() {
    check_eq("no dirs", service_for(None, None), SERVICE.to_owned());
    let h = |s: &str| {
        use sha2::Digest;
        let d = sha2::Sha256::digest(s.as_bytes());
        format!("{SERVICE}-{:02x}{:02x}{:02x}{:02x}", d[0], d[1], d[2], d[3])
    };
    check_eq(
        "config dir",
        service_for(Some("/x/.claude"), None),
        h("/x/.claude"),
    );
    check_eq(
        "securestorage wins",
        service_for(Some("/x"), Some("/y")),
        h("/y"),
    );
    check_eq(
        "empty securestorage",
        service_for(Some("/x"), Some("")),
        SERVICE.to_owned(),
    );
    // SHA-256("/tmp"), computed with `printf /tmp | sha256sum`.
    check_eq(
        "a known hash",
        service_for(Some("/tmp"), None),
        "Claude Code-credentials-e9671acd".to_owned(),
    );
    check_eq(
        "user",
        account_for(Some("alice.b_c-1")),
        "alice.b_c-1".to_owned(),
    );
    check_eq(
        "bad user",
        account_for(Some("bad user!")),
        FALLBACK_ACCOUNT.to_owned(),
    );
    check_eq("no user", account_for(None), FALLBACK_ACCOUNT.to_owned());
}
