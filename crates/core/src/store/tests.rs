//! The store's unit tests: locating, naming the Keychain item, the atomic write, the lock.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;

use super::file::{is_mount_point, random_u32};
use super::locate::absolute_from;
use super::*;
use crate::schedule::GrantRecord;

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "tokend-store-{tag}-{}-{:08x}",
        std::process::id(),
        random_u32()
    ));
    fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn locate_follows_the_contract_order() {
    let os = |s: &str| Some(OsString::from(s));
    type Row<'a> = (
        Option<&'a str>,
        Option<OsString>,
        Option<OsString>,
        Result<(&'a str, Origin), NoHomeError>,
    );
    let cases: &[Row] = &[
        (
            Some("/x/c.json"),
            os("/cfg"),
            os("/home/u"),
            Ok(("/x/c.json", Origin::Explicit)),
        ),
        (
            None,
            os("/cfg"),
            os("/home/u"),
            Ok(("/cfg/.credentials.json", Origin::ConfigDir)),
        ),
        (
            None,
            os(""),
            os("/home/u"),
            Ok(("/home/u/.claude/.credentials.json", Origin::Home)),
        ),
        (
            Some(""),
            None,
            os("/home/u"),
            Ok(("/home/u/.claude/.credentials.json", Origin::Home)),
        ),
        (None, None, None, Err(NoHomeError)),
        (None, None, os(""), Err(NoHomeError)),
    ];
    for (explicit, cfg, home, want) in cases {
        let env = LocateEnv {
            config_dir: cfg.clone(),
            home: home.clone(),
            ..LocateEnv::default()
        };
        let got = locate(explicit.map(Path::new), &env);
        let want = want
            .as_ref()
            .map(|(p, o)| (PathBuf::from(p), *o))
            .map_err(|_| NoHomeError);
        assert_eq!(got, want, "explicit={explicit:?} cfg={cfg:?} home={home:?}");
    }
}

#[test]
fn paths_are_made_absolute_lexically_like_node_path_resolve() {
    let cases = [
        ("/home/u/w", ".", "/home/u/w"),
        ("/home/u/w", "..", "/home/u"),
        (
            "/home/u/w",
            "./.credentials.json",
            "/home/u/w/.credentials.json",
        ),
        ("/home/u/w", "a/../b/./c.json", "/home/u/w/b/c.json"),
        ("/home/u/w", "../../../../x", "/x"),
        ("/home/u/w", "/abs/./p/../q", "/abs/q"),
        ("/home/u/w", "a//b/", "/home/u/w/a/b"),
        ("/", "..", "/"),
    ];
    for (cwd, path, want) in cases {
        assert_eq!(
            absolute_from(Path::new(cwd), Path::new(path)),
            PathBuf::from(want),
            "{cwd} + {path}"
        );
    }
    // The lock names follow: `.` in /home/u/.claude locks /home/u/.claude.lock.
    let env = LocateEnv {
        config_dir: Some(".".into()),
        ..LocateEnv::default()
    };
    let (path, _) = locate(None, &env).unwrap();
    let cwd = std::env::current_dir().unwrap();
    assert_eq!(path, cwd.join(FILE_NAME));
    assert!(
        locate(Some(Path::new("rel/x.json")), &LocateEnv::default())
            .unwrap()
            .0
            .is_absolute()
    );
}

#[test]
fn resolves_relative_and_chained_symlinks() {
    let dir = temp_dir("links");
    fs::create_dir(dir.join("real")).unwrap();
    fs::write(dir.join("real/creds.json"), "{}").unwrap();
    std::os::unix::fs::symlink("real/creds.json", dir.join("one")).unwrap();
    std::os::unix::fs::symlink(dir.join("one"), dir.join("two")).unwrap();
    assert_eq!(
        resolve_symlinks(&dir.join("two")).unwrap(),
        dir.join("real/creds.json")
    );
    // A dangling link resolves to where the file would be.
    std::os::unix::fs::symlink("nowhere.json", dir.join("dangling")).unwrap();
    assert_eq!(
        resolve_symlinks(&dir.join("dangling")).unwrap(),
        dir.join("nowhere.json")
    );
    std::os::unix::fs::symlink("loop", dir.join("loop")).unwrap();
    assert!(resolve_symlinks(&dir.join("loop")).is_err());
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn dropped_pending_write_leaves_nothing() {
    let dir = temp_dir("drop");
    let store = Store::new(dir.join(FILE_NAME));
    let pending = store.begin_write().unwrap();
    let temp = pending.temp_path().unwrap().to_path_buf();
    assert!(temp.exists());
    assert_eq!(
        fs::metadata(&temp).unwrap().permissions().mode() & 0o777,
        0o600
    );
    drop(pending);
    assert!(!temp.exists());
    assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn commit_replaces_the_target_and_keeps_the_link() {
    let dir = temp_dir("commit");
    fs::write(dir.join("real.json"), r#"{"keep": true}"#).unwrap();
    std::os::unix::fs::symlink("real.json", dir.join(FILE_NAME)).unwrap();
    let store = Store::new(dir.join(FILE_NAME));
    let mut doc = store.read().unwrap().doc;
    doc.apply(&crate::credentials::TokenUpdate {
        access_token: crate::secret::Secret::new("a"),
        refresh_token: None,
        expires_at: 5,
        refresh_token_expires_at: None,
        scopes: None,
    });
    store.begin_write().unwrap().commit(&doc).unwrap();
    assert!(
        fs::symlink_metadata(dir.join(FILE_NAME))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    let text = fs::read_to_string(dir.join("real.json")).unwrap();
    assert!(text.contains("\"keep\": true") && text.contains("\"expiresAt\": 5"));
    let mode = fs::metadata(dir.join("real.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let names: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "no stray files: {names:?}");
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn in_place_fallback_writes_whole_and_leaves_no_backup() {
    let dir = temp_dir("inplace");
    let target = dir.join(FILE_NAME);
    fs::write(
        &target,
        r#"{"keep": [1, 2, 3], "long": "a much longer document than the new one"}"#,
    )
    .unwrap();
    fs::set_permissions(&target, fs::Permissions::from_mode(0o644)).unwrap();
    let store = Store::new(&target);
    let pending = file::begin_write(&store.target()).unwrap();
    let doc = Credentials::parse(br#"{"keep": 1}"#).unwrap();
    pending.write_in_place(&doc.to_bytes()).unwrap();
    drop(pending);
    assert_eq!(
        fs::read(&target).unwrap(),
        doc.to_bytes(),
        "no tail of the old content"
    );
    assert_eq!(
        fs::metadata(&target).unwrap().permissions().mode() & 0o777,
        FILE_MODE,
        "a file written in place is 0600 too"
    );
    let names: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, [FILE_NAME], "no backup or temp file left");
    assert!(is_mount_point(&io::Error::from_raw_os_error(libc::EBUSY)));
    assert!(is_mount_point(&io::Error::from_raw_os_error(libc::EXDEV)));
    assert!(!is_mount_point(&io::Error::from_raw_os_error(libc::EACCES)));
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn utc_stamps_by_table() {
    let at = |secs: u64| utc_stamp(std::time::UNIX_EPOCH + Duration::from_secs(secs));
    assert_eq!(at(0), "19700101T000000Z");
    assert_eq!(at(951_782_400), "20000229T000000Z");
    assert_eq!(at(1_796_184_753), "20261202T041233Z");
    assert_eq!(at(4_102_444_799), "20991231T235959Z");
}

#[test]
fn copy_aside_keeps_the_bytes_and_the_grant_record_survives_the_ledger() {
    let dir = temp_dir("aside");
    let store = Store::new(dir.join(FILE_NAME));
    fs::write(dir.join(FILE_NAME), b"{not json\x00").unwrap();
    let first = store.copy_aside().unwrap();
    let second = store.copy_aside().unwrap();
    assert_ne!(
        first, second,
        "a second copy in the same second gets its own name"
    );
    assert_eq!(fs::read(&first).unwrap(), b"{not json\x00");
    assert_eq!(
        fs::metadata(&first).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let name = first.file_name().unwrap().to_str().unwrap().to_owned();
    assert!(name.starts_with(".credentials.json.malformed-2"), "{name}");

    let lock = store.try_lock().unwrap().unwrap();
    let record = GrantRecord {
        obtained_at: 5,
        obtained_boot: 6,
        lifetime_ms: 600_000,
        token: "0123456789abcdef".into(),
    };
    lock.append_ledger("/x/.oauth_refresh.lock\t1\t2\t3\n");
    lock.set_grant_record(&record);
    lock.set_ledger("");
    assert_eq!(lock.grant_record(), Some(record.clone()));
    lock.append_ledger("/y\t1\t2\t-\n");
    assert_eq!(lock.ledger(), "/y\t1\t2\t-\n");
    assert_eq!(lock.grant_record(), Some(record));
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn lock_is_exclusive_across_handles() {
    let dir = temp_dir("lock");
    let store = Store::new(dir.join(FILE_NAME));
    let held = store.try_lock().unwrap().expect("free lock");
    assert!(
        store.try_lock().unwrap().is_none(),
        "second taker must wait"
    );
    drop(held);
    assert!(store.try_lock().unwrap().is_some());
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn securestorage_dir_moves_the_file_and_set_but_empty_means_home() {
    let os = |s: &str| Some(OsString::from(s));
    let env = |ss: Option<OsString>, cfg: Option<OsString>| LocateEnv {
        securestorage_dir: ss,
        config_dir: cfg,
        home: os("/home/u"),
        user: None,
    };
    let cases = [
        (
            env(os("/ss"), os("/cfg")),
            "/ss/.credentials.json",
            Origin::SecureStorageDir,
        ),
        (
            env(os(""), os("/cfg")),
            "/home/u/.claude/.credentials.json",
            Origin::Home,
        ),
        (
            env(None, os("/cfg")),
            "/cfg/.credentials.json",
            Origin::ConfigDir,
        ),
    ];
    for (env, want, origin) in cases {
        assert_eq!(
            locate(None, &env).unwrap(),
            (PathBuf::from(want), origin),
            "{env:?}"
        );
    }
    // An explicit path still wins over everything.
    assert_eq!(
        locate(Some(Path::new("/x.json")), &env(os("/ss"), None))
            .unwrap()
            .1,
        Origin::Explicit
    );
}

#[test]
fn keychain_names_follow_claude_code() {
    let os = |s: &str| Some(OsString::from(s));
    let hash8 = |s: &str| {
        use sha2::{Digest, Sha256};
        encode_hex(&Sha256::digest(s.as_bytes())[..4])
    };
    let env = |ss: Option<OsString>, cfg: Option<OsString>| LocateEnv {
        securestorage_dir: ss,
        config_dir: cfg,
        ..LocateEnv::default()
    };
    let plain = KEYCHAIN_SERVICE.to_owned();
    let suffixed = |dir: &str| format!("{KEYCHAIN_SERVICE}-{}", hash8(dir));
    let cases = [
        (env(None, None), plain.clone()),
        (env(os(""), None), plain.clone()),
        (env(os(""), os("/cfg")), plain.clone()),
        (env(None, os("")), plain.clone()),
        (env(None, os("/cfg")), suffixed("/cfg")),
        // As given, not made absolute, even when it is the default directory.
        (env(None, os("~/.claude")), suffixed("~/.claude")),
        (env(None, os("rel/dir")), suffixed("rel/dir")),
        (env(os("/ss"), os("/cfg")), suffixed("/ss")),
        // NFC: a decomposed é hashes like the composed one.
        (
            env(None, os("/tmp/cafe\u{301}")),
            suffixed("/tmp/caf\u{e9}"),
        ),
    ];
    for (env, want) in cases {
        assert_eq!(keychain_service(&env), want, "{env:?}");
    }
    let user = |u: Option<&str>| LocateEnv {
        user: u.map(OsString::from),
        ..LocateEnv::default()
    };
    for (u, want) in [
        (Some("alice"), "alice"),
        (Some("a.b_c-9"), "a.b_c-9"),
        (None, FALLBACK_ACCOUNT),
        (Some(""), FALLBACK_ACCOUNT),
        (Some("bad user!"), FALLBACK_ACCOUNT),
        (Some("ünï"), FALLBACK_ACCOUNT),
    ] {
        assert_eq!(keychain_account(&user(u)), want, "{u:?}");
    }
}

#[test]
fn a_keychain_login_locks_in_its_config_dir() {
    let item = Keychain {
        service: "Claude Code-credentials".into(),
        account: "u".into(),
    };
    let store = Store::keychain("/home/u/.claude/.credentials.json", item);
    assert_eq!(store.kind(), Kind::Keychain);
    assert_eq!(
        store.lock_path(),
        PathBuf::from("/home/u/.claude/.credentials.json.lock")
    );
    assert_eq!(
        store.place().to_string(),
        "the Keychain item \"Claude Code-credentials\" (account \"u\")"
    );
}
