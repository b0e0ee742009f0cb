//! `Mirror::sync` on real files: what a hostile consumer can plant in a mirror directory, and
//! what comes of it.

use super::*;
use serde_json::json;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

/// A fresh directory under the system's temp dir, removed at drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        let mut b = [0u8; 8];
        getrandom::fill(&mut b).unwrap();
        let p = std::env::temp_dir().join(format!("tokend-mirror-{:016x}", u64::from_ne_bytes(b)));
        std::fs::create_dir(&p).unwrap();
        Scratch(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn login(token: &str) -> Want {
    let Value::Object(m) = json!({"accessToken": token, "expiresAt": 1_900_000_000_000_i64, "scopes": ["user:inference"]})
    else {
        unreachable!()
    };
    Want::Login(m)
}

fn read(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn setup() -> (Scratch, Mirror) {
    let s = Scratch::new();
    let m = Mirror::new(resolve(&s.0.join("mirror")));
    std::fs::create_dir(m.dir()).unwrap();
    (s, m)
}

#[test]
fn a_new_mirror_is_written_0600_in_a_created_0700_directory() {
    let s = Scratch::new();
    let m = Mirror::new(resolve(&s.0.join("new")));
    assert_eq!(
        m.sync(&login("a1"), false).unwrap(),
        Synced::Written { replaced: None }
    );
    assert_eq!(
        std::fs::metadata(m.dir()).unwrap().permissions().mode() & 0o777,
        0o700
    );
    assert_eq!(
        std::fs::metadata(m.file()).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(read(&m.file())["claudeAiOauth"]["accessToken"], "a1");
    assert_eq!(m.sync(&login("a1"), false).unwrap(), Synced::Unchanged);
    assert!(m.last_written().is_some());
    assert!(!std::fs::exists(m.dir().join(".credentials.json.tokend-tmp")).unwrap());
}

#[test]
fn a_missing_parent_is_an_error_and_a_logout_creates_nothing() {
    let s = Scratch::new();
    let deep = Mirror::new(resolve(&s.0.join("no/such")));
    let e = deep.sync(&login("a"), false).unwrap_err();
    assert!(
        e.to_string().contains("parent directory does not exist"),
        "{e}"
    );
    let m = Mirror::new(resolve(&s.0.join("absent")));
    assert_eq!(m.sync(&Want::NoLogin, false).unwrap(), Synced::Unchanged);
    assert!(!m.dir().exists());
    let (_s2, m) = setup();
    assert_eq!(m.sync(&Want::NoLogin, false).unwrap(), Synced::Unchanged);
    assert!(!m.file().exists(), "no file is made just to hold nothing");
}

#[test]
fn the_consumers_keys_stay_and_a_logout_removes_only_the_login() {
    let (_s, m) = setup();
    std::fs::write(
        m.file(),
        r#"{"mcpOAuth":{"own":"x"},"claudeAiOauth":{"accessToken":"old"}}"#,
    )
    .unwrap();
    m.sync(&login("new"), false).unwrap();
    let doc = read(&m.file());
    assert_eq!(doc["mcpOAuth"], json!({"own": "x"}));
    assert_eq!(doc["claudeAiOauth"]["accessToken"], "new");
    assert_eq!(
        m.sync(&Want::NoLogin, false).unwrap(),
        Synced::Written { replaced: None }
    );
    assert_eq!(read(&m.file()), json!({"mcpOAuth": {"own": "x"}}));
}

#[test]
fn a_planted_symlink_is_replaced_and_its_target_never_read_or_written() {
    let (s, m) = setup();
    let host = s.0.join("host-secret");
    std::fs::write(&host, r#"{"hostOnly":"do-not-copy"}"#).unwrap();
    std::os::unix::fs::symlink(&host, m.file()).unwrap();
    assert_eq!(
        m.sync(&login("a"), false).unwrap(),
        Synced::Written {
            replaced: Some("a symlink")
        }
    );
    assert_eq!(
        std::fs::read_to_string(&host).unwrap(),
        r#"{"hostOnly":"do-not-copy"}"#
    );
    let meta = std::fs::symlink_metadata(m.file()).unwrap();
    assert!(meta.file_type().is_file());
    assert!(
        !std::fs::read_to_string(m.file())
            .unwrap()
            .contains("do-not-copy")
    );
}

#[test]
fn a_fifo_hard_link_directory_or_huge_file_is_replaced_without_blocking() {
    let (s, m) = setup();
    let fifo = std::ffi::CString::new(m.file().as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    assert_eq!(
        m.sync(&login("a"), false).unwrap(),
        Synced::Written {
            replaced: Some("a FIFO")
        }
    );

    let host = s.0.join("host");
    std::fs::write(&host, "host bytes").unwrap();
    std::fs::remove_file(m.file()).unwrap();
    std::fs::hard_link(&host, m.file()).unwrap();
    assert_eq!(
        m.sync(&login("b"), false).unwrap(),
        Synced::Written {
            replaced: Some("hard-linked to another file")
        }
    );
    assert_eq!(std::fs::read_to_string(&host).unwrap(), "host bytes");
    assert_eq!(std::fs::metadata(m.file()).unwrap().nlink(), 1);

    std::fs::remove_file(m.file()).unwrap();
    std::fs::create_dir(m.file()).unwrap();
    assert_eq!(
        m.sync(&login("c"), false).unwrap(),
        Synced::Written {
            replaced: Some("a directory")
        }
    );

    std::fs::write(m.file(), vec![b' '; MAX_READ as usize + 1]).unwrap();
    assert_eq!(
        m.sync(&login("d"), false).unwrap(),
        Synced::Written {
            replaced: Some("larger than 1 MiB")
        }
    );
    assert_eq!(read(&m.file())["claudeAiOauth"]["accessToken"], "d");
}

#[test]
fn an_unparsable_file_is_looked_at_again_before_it_is_replaced() {
    let (_s, m) = setup();
    std::fs::write(m.file(), r#"{"claudeAiOauth": {"acc"#).unwrap();
    assert_eq!(m.sync(&login("a"), false).unwrap(), Synced::Unparsable);
    assert_eq!(
        std::fs::read_to_string(m.file()).unwrap(),
        r#"{"claudeAiOauth": {"acc"#
    );
    assert!(matches!(
        m.sync(&login("a"), true).unwrap(),
        Synced::Written { replaced: Some(_) }
    ));
    assert_eq!(read(&m.file())["claudeAiOauth"]["accessToken"], "a");
}

#[test]
fn a_real_login_in_a_mirror_is_never_touched() {
    let (_s, m) = setup();
    let real = r#"{"claudeAiOauth":{"accessToken":"x","refreshToken":"sk-ant-ort01-real"}}"#;
    std::fs::write(m.file(), real).unwrap();
    assert!(m.holds_real_login());
    assert_eq!(
        m.sync(&login("a"), true).unwrap(),
        Synced::HoldsRefreshToken
    );
    assert_eq!(
        m.sync(&Want::NoLogin, true).unwrap(),
        Synced::HoldsRefreshToken
    );
    assert_eq!(std::fs::read_to_string(m.file()).unwrap(), real);
}

#[test]
fn a_mirror_directory_turned_into_a_symlink_is_not_written_through() {
    let (s, m) = setup();
    let elsewhere = s.0.join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::fs::remove_dir(m.dir()).unwrap();
    std::os::unix::fs::symlink(&elsewhere, m.dir()).unwrap();
    let e = m.sync(&login("a"), true).unwrap_err();
    assert!(e.to_string().contains("symlink"), "{e}");
    assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
    assert!(!m.holds_real_login());
    assert_eq!(m.last_written(), None);
}

#[test]
fn a_stale_temp_file_or_a_link_at_its_name_is_taken_away_not_followed() {
    let (s, m) = setup();
    let host = s.0.join("host");
    std::fs::write(&host, "host").unwrap();
    std::os::unix::fs::symlink(&host, m.dir().join(".credentials.json.tokend-tmp")).unwrap();
    m.sync(&login("a"), false).unwrap();
    assert_eq!(std::fs::read_to_string(&host).unwrap(), "host");
    assert!(!std::fs::exists(m.dir().join(".credentials.json.tokend-tmp")).unwrap());
}

#[test]
fn resolve_follows_the_links_above_a_mirror_never_the_one_at_it() {
    let s = Scratch::new();
    let real = s.0.join("real");
    std::fs::create_dir(&real).unwrap();
    std::os::unix::fs::symlink(&real, s.0.join("link")).unwrap();
    let canon = std::fs::canonicalize(&s.0).unwrap();
    assert_eq!(resolve(&s.0.join("link")), canon.join("link"));
    assert_eq!(
        resolve(&s.0.join("link/../link/new")),
        canon.join("real/new")
    );
    assert_eq!(resolve(&s.0.join("link/m")), canon.join("real/m"));
    assert_eq!(
        resolve(&s.0.join("link/not/yet/m")),
        canon.join("real/not/yet/m"),
        "missing ancestors keep their names"
    );
}

#[test]
fn an_ancestor_swapped_for_a_link_since_start_is_not_written_through() {
    let s = Scratch::new();
    let mirrors = s.0.join("mirrors");
    std::fs::create_dir(&mirrors).unwrap();
    let m = Mirror::new(resolve(&mirrors.join("claude")));
    m.sync(&login("a"), false).unwrap();
    // The consumer owns `mirrors` too, and swaps it for a link to a host directory.
    let victim = s.0.join("victim");
    std::fs::create_dir(&victim).unwrap();
    std::fs::rename(&mirrors, s.0.join("old")).unwrap();
    std::os::unix::fs::symlink(&victim, &mirrors).unwrap();
    let e = m.sync(&login("b"), false).unwrap_err();
    assert!(e.to_string().contains("symlink on the way"), "{e}");
    assert_eq!(std::fs::read_dir(&victim).unwrap().count(), 0);

    // A parent missing at start and made a link later is refused alike.
    let later = Mirror::new(resolve(&s.0.join("later/claude")));
    std::os::unix::fs::symlink(&victim, s.0.join("later")).unwrap();
    assert!(later.sync(&login("c"), false).is_err());
    assert_eq!(std::fs::read_dir(&victim).unwrap().count(), 0);
    // Made a real directory, it is written.
    std::fs::remove_file(s.0.join("later")).unwrap();
    std::fs::create_dir(s.0.join("later")).unwrap();
    assert!(later.sync(&login("c"), false).is_ok());
}

#[test]
fn a_file_that_changed_since_the_look_is_put_back_not_overwritten() {
    let (_s, m) = setup();
    let dir = super::dir::Parent::open(m.dir().parent().unwrap())
        .unwrap()
        .open_dir(&std::ffi::CString::new("mirror").unwrap())
        .unwrap();
    let consumer = r#"{"claudeAiOauth":{"accessToken":"x","refreshToken":"sk-ant-ort01-theirs"}}"#;
    std::fs::write(m.file(), consumer).unwrap();
    // Written as if the look had seen an older file (or none): the consumer's login stays.
    let older = super::dir::Seen::Bytes(b"{}".to_vec());
    for seen in [older, super::dir::Seen::Absent, super::dir::Seen::Foreign] {
        let e = dir
            .replace(super::dir::FILE, b"{\"new\":1}", &seen)
            .unwrap_err();
        assert!(super::dir::is_raced(&e), "{e}");
        assert_eq!(std::fs::read_to_string(m.file()).unwrap(), consumer);
        assert!(!std::fs::exists(m.dir().join(".credentials.json.tokend-tmp")).unwrap());
    }
    // Seen as it is: written.
    let seen = super::dir::Seen::Bytes(consumer.as_bytes().to_vec());
    dir.replace(super::dir::FILE, b"{\"new\":1}", &seen)
        .unwrap();
    assert_eq!(std::fs::read_to_string(m.file()).unwrap(), "{\"new\":1}");
}

#[test]
fn a_link_someone_else_made_above_a_mirror_is_not_followed_at_start() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root to make a link owned by another user");
        return;
    }
    let s = Scratch::new();
    let canon = std::fs::canonicalize(&s.0).unwrap();
    let victim = s.0.join("victim");
    std::fs::create_dir(&victim).unwrap();
    // The consumer (uid 65534) owns `cons`, and made `cons/work` a link to the victim.
    let cons = s.0.join("cons");
    std::fs::create_dir(&cons).unwrap();
    std::os::unix::fs::chown(&cons, Some(65534), Some(65534)).unwrap();
    let work = cons.join("work");
    std::os::unix::fs::symlink(&victim, &work).unwrap();
    std::os::unix::fs::lchown(&work, Some(65534), Some(65534)).unwrap();
    let m = Mirror::new(resolve(&work.join("claude")));
    assert_eq!(m.dir(), s.0.join("cons/work/claude"), "kept as written");
    assert!(m.sync(&login("a"), false).is_err());
    assert_eq!(
        std::fs::read_dir(&victim).unwrap().count(),
        0,
        "nothing written there"
    );
    // The same link made by root (this user) is followed.
    std::os::unix::fs::lchown(&work, Some(0), Some(0)).unwrap();
    std::os::unix::fs::chown(&cons, Some(0), Some(0)).unwrap();
    assert_eq!(resolve(&work.join("claude")), canon.join("victim/claude"));
}
