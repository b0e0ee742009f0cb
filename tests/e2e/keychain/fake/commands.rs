//! The item commands run one at a time: values as text or hex, exit codes 44/45/36/1, `-U`,
//! usage errors and refused options, the attribute listing, and `mdat` on every write.

use super::*;

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
