//! Unit tests of the `store` and `login` checks: each verdict and fix from constructed facts.

use super::*;
use crate::doctor::Verdict;
use tokend_core::secret::Secret;
use tokend_core::store::RefusedRecord;

const HOUR: i64 = 3_600_000;
const NOW: i64 = 1_800_000_000_000;

fn view(refresh: &str, expires: Option<i64>, ends: Option<i64>) -> OAuthView {
    OAuthView {
        access_token: Secret::new("sk-ant-oat01-a"),
        refresh_token: Some(Secret::new(refresh)),
        expires_at: expires,
        refresh_token_expires_at: ends,
        scopes: None,
        client_id: None,
        subscription_type: None,
        rate_limit_tier: None,
    }
}

/// A login at /h/.claude/.credentials.json, read as `read`, for user 1000.
fn facts(read: Result<Snapshot, StoreError>) -> Facts {
    Facts {
        place: "/h/.claude/.credentials.json".into(),
        kind: Kind::File,
        target: PathBuf::from("/h/.claude/.credentials.json"),
        read,
        owner: Some(1000),
        me: 1000,
        expected: 1000,
        found: Found::File,
        dir_enterable: true,
        dir_owner: Some(1000),
        dir: PathBuf::from("/h/.claude"),
        dir_writable: true,
        records: Records::default(),
        home: Some(PathBuf::from("/h")),
    }
}

fn snapshot(mode: u32) -> Result<Snapshot, StoreError> {
    let doc = tokend_core::credentials::Credentials::parse(
        br#"{"claudeAiOauth":{"accessToken":"a","refreshToken":"r","expiresAt":1}}"#,
    )
    .unwrap();
    Ok(Snapshot {
        doc,
        fingerprint: 0,
        mode,
    })
}

fn denied() -> Result<Snapshot, StoreError> {
    Err(StoreError::Unreadable {
        place: tokend_core::store::Place::File("/h/.claude/.credentials.json".into()),
        source: std::io::ErrorKind::PermissionDenied.into(),
    })
}

#[test]
fn a_directory_left_by_sudo_claude_is_given_back_first() {
    let f = Facts {
        owner: None,
        found: Found::Unknown,
        dir_enterable: false,
        dir_owner: Some(0),
        dir_writable: false,
        ..facts(denied())
    };
    let c = store_check(&f);
    assert_eq!(c.verdict, Verdict::Fail);
    assert!(
        c.detail.contains("you cannot enter /h/.claude"),
        "{}",
        c.detail
    );
    assert!(c.detail.contains("`sudo claude`"), "{}", c.detail);
    assert_eq!(
        c.fix.as_deref(),
        Some("give it back: sudo chown -R $(id -un): /h/.claude")
    );
}

#[test]
fn a_root_file_in_your_own_directory_is_still_replaceable_by_rename() {
    let f = Facts {
        owner: Some(0),
        ..facts(snapshot(0o644))
    };
    let c = store_check(&f);
    assert_eq!(c.verdict, Verdict::Fail);
    assert!(c.detail.contains("`sudo claude`"), "{}", c.detail);
    assert!(c.detail.contains("cannot change its mode"), "{}", c.detail);
    assert!(c.detail.contains("still replaces it"), "{}", c.detail);
    assert!(!c.detail.to_lowercase().contains("neither"), "{}", c.detail);
    assert!(
        c.fix
            .as_deref()
            .unwrap()
            .starts_with("give it back: sudo chown $(id -un): /h/.claude/.credentials.json"),
        "{:?}",
        c.fix
    );
    // In a directory not writable either: nothing replaces it.
    let c = store_check(&Facts {
        dir_writable: false,
        ..f
    });
    assert!(c.detail.contains("nothing can replace it"), "{}", c.detail);
}

#[test]
fn root_judges_a_login_by_its_directorys_owner_and_never_chowns_to_root() {
    // Root (sudo -E) looking at user 1000's login: theirs, fine.
    let theirs = Facts {
        me: 0,
        ..facts(snapshot(0o600))
    };
    assert_eq!(store_check(&theirs).verdict, Verdict::Ok);
    // A file of root's in their directory: given back to them, not to root.
    let c = store_check(&Facts {
        owner: Some(0),
        ..theirs
    });
    assert_eq!(c.verdict, Verdict::Fail);
    let fix = c.fix.unwrap();
    assert!(fix.contains("sudo chown "), "{fix}");
    assert!(!fix.contains("$(id -un)"), "{fix}");
    // Root's own login holding another user's file: no chown to root is offered.
    let c = store_check(&Facts {
        me: 0,
        expected: 0,
        owner: Some(1000),
        ..facts(snapshot(0o600))
    });
    assert_eq!(c.verdict, Verdict::Fail);
    assert!(!c.fix.unwrap().contains("chown"));
}

#[test]
fn the_login_by_table() {
    let none = Records::default();
    let cases: Vec<(OAuthView, Verdict, &str)> = vec![
        (
            view("r", Some(NOW + HOUR), Some(NOW + 20 * 24 * HOUR)),
            Verdict::Ok,
            "signed in",
        ),
        (
            view("r", Some(NOW - HOUR), Some(NOW + 20 * 24 * HOUR)),
            Verdict::Warn,
            "expired",
        ),
        (
            view("r", Some(NOW + HOUR), Some(NOW + 2 * 24 * HOUR)),
            Verdict::Warn,
            "ends",
        ),
        (
            view("r", Some(NOW + HOUR), Some(NOW - HOUR)),
            Verdict::Fail,
            "ended",
        ),
        (
            view("", Some(NOW + HOUR), None),
            Verdict::Warn,
            "no refresh token",
        ),
        (view("r", None, None), Verdict::Warn, "not recorded"),
    ];
    for (v, want, word) in cases {
        let c = judge(&v, &none, NOW);
        assert_eq!(c.verdict, want, "{}", c.detail);
        assert!(c.detail.contains(word), "{word}: {}", c.detail);
    }
    // An ended login whose access token expired too: no refresh can help.
    let c = judge(&view("r", Some(NOW - HOUR), Some(NOW - HOUR)), &none, NOW);
    assert_eq!(c.verdict, Verdict::Fail);
    assert!(
        !c.fix.as_deref().unwrap().contains("claude-tokend refresh"),
        "{:?}",
        c.fix
    );
    let mut blank = view("", Some(0), None);
    blank.access_token = Secret::new("");
    assert_eq!(judge(&blank, &none, NOW).verdict, Verdict::Fail);
    let refused = Records {
        refused: Some(RefusedRecord::new(&Secret::new("r"), NOW - HOUR)),
        ..Records::default()
    };
    let ok_view = view("r", Some(NOW + HOUR), None);
    let c = judge(&ok_view, &refused, NOW);
    assert_eq!(c.verdict, Verdict::Warn);
    assert!(c.detail.contains("refused"), "{}", c.detail);
    let c = judge(&view("r", Some(NOW - HOUR), None), &refused, NOW);
    assert_eq!(c.verdict, Verdict::Warn);
    assert!(
        !c.fix.as_deref().unwrap().contains("claude-tokend refresh"),
        "{:?}",
        c.fix
    );
    // A refusal of an older token says nothing about this one.
    assert_eq!(
        judge(&view("r2", Some(NOW + HOUR), None), &refused, NOW).verdict,
        Verdict::Ok
    );
}

#[test]
fn no_owner_or_mode_is_suggested_for_a_directory_outside_the_users_home() {
    // A login in /etc (a read-only mounted login, a system file): never `sudo chown … /etc`.
    let f = Facts {
        place: "/etc/creds.json".into(),
        target: PathBuf::from("/etc/creds.json"),
        dir: PathBuf::from("/etc"),
        dir_owner: Some(0),
        owner: Some(0),
        dir_writable: false,
        ..facts(snapshot(0o600))
    };
    let c = store_check(&f);
    let fix = c.fix.unwrap_or_default();
    assert!(
        !fix.contains("chown") && !fix.contains("chmod 700"),
        "{fix}"
    );
    assert!(fix.contains("outside your home"), "{fix}");
    // A link from the home to /root resolves outside it: no `chown -R … /root` either.
    let f = Facts {
        dir: PathBuf::from("/root"),
        target: PathBuf::from("/root/.credentials.json"),
        dir_enterable: false,
        dir_owner: Some(0),
        owner: None,
        found: Found::Unknown,
        ..facts(denied())
    };
    let fix = store_check(&f).fix.unwrap_or_default();
    assert!(!fix.contains("chown"), "{fix}");
}
