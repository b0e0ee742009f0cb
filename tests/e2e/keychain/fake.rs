//! The fake `security` itself: that it behaves as the contract (and Apple's SecurityTool) says,
//! so the Keychain suite tests the program against something faithful. These pass on their own,
//! whatever state the program is in.
//!
//! This file holds the helpers that run it and the tests of the whole fake (the binary the
//! harness uses, concurrent writers, the naming rules); `fake/` holds the rest by area.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use claude_tokend_e2e::keychain::*;
use claude_tokend_e2e::*;
use serde_json::json;

mod commands;
mod interactive;

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
