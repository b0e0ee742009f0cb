//! Fuzzes the credentials reader and merger: `Credentials::parse` on arbitrary bytes must never
//! panic, and for every document that parses, a rewrite must be lossless:
//!
//! * `to_bytes` then `parse` gives back the same document;
//! * `apply` (a refresh) then `to_bytes` then `parse` keeps every key this program does not own
//!   equal, at the top level and inside `claudeAiOauth`, and in the same order (keys that existed
//!   keep their place, new owned keys go at the end), and the owned fields read back as written.
//!
//! The input stays plain bytes, so any credentials file can seed the corpus as it is. The update
//! applied is derived from a hash of the input, so the fuzzer also varies which optional fields
//! it carries and the `expiresAt` value (any `i64`).

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};
use tokend_core::credentials::{Credentials, OAUTH_KEY, TokenUpdate};
use tokend_core::secret::Secret;

/// The fields of `claudeAiOauth` that `Credentials::apply` writes.
const OWNED: [&str; 5] = [
    "accessToken",
    "refreshToken",
    "expiresAt",
    "refreshTokenExpiresAt",
    "scopes",
];

fuzz_target!(|data: &[u8]| {
    let Ok(doc) = Credentials::parse(data) else {
        return;
    };

    // A rewrite without an update changes nothing.
    let again = Credentials::parse(&doc.to_bytes()).expect("to_bytes output must parse");
    assert_eq!(again, doc, "to_bytes → parse is not the identity");

    let update = update_from(data);
    let mut updated = doc.clone();
    updated.apply(&update);
    let reread = Credentials::parse(&updated.to_bytes()).expect("an updated document must parse");

    // Top level: every key but `claudeAiOauth` equal, and all keys in their old order.
    let (before, after) = (doc.root(), reread.root());
    for (key, value) in before.iter().filter(|(k, _)| *k != OAUTH_KEY) {
        assert_eq!(after.get(key), Some(value), "top-level key {key:?} changed");
    }
    assert_keeps_order(before, after, &[OAUTH_KEY]);

    // Inside `claudeAiOauth` (absent or null before: an empty object then).
    let empty = Map::new();
    let old = match before.get(OAUTH_KEY) {
        Some(Value::Object(o)) => o,
        _ => &empty,
    };
    let Some(Value::Object(new)) = after.get(OAUTH_KEY) else {
        panic!("claudeAiOauth is not an object after apply");
    };
    for (key, value) in old.iter().filter(|(k, _)| !OWNED.contains(&k.as_str())) {
        assert_eq!(new.get(key), Some(value), "claudeAiOauth.{key} changed");
    }
    assert_keeps_order(old, new, &OWNED);

    // The owned fields read back as written.
    let view = reread
        .oauth()
        .expect("updated document is valid")
        .expect("updated document has a login");
    assert_eq!(view.access_token, update.access_token);
    assert_eq!(view.expires_at, Some(update.expires_at));
    let old_view = doc.oauth().expect("parsed document is valid");
    let old_view = old_view.as_ref();
    let expect_rt = update
        .refresh_token
        .clone()
        .or_else(|| old_view.and_then(|v| v.refresh_token.clone()));
    assert_eq!(view.refresh_token, expect_rt);
    let expect_rt_exp = update
        .refresh_token_expires_at
        .or_else(|| old_view.and_then(|v| v.refresh_token_expires_at));
    assert_eq!(view.refresh_token_expires_at, expect_rt_exp);
    let expect_scopes = update
        .scopes
        .clone()
        .or_else(|| old_view.and_then(|v| v.scopes.clone()));
    assert_eq!(view.scopes, expect_scopes);
});

/// `after` starts with exactly the keys of `before`, in order; anything past them is one of
/// `may_add` (a key that `apply` creates).
fn assert_keeps_order(before: &Map<String, Value>, after: &Map<String, Value>, may_add: &[&str]) {
    let old: Vec<&String> = before.keys().collect();
    let new: Vec<&String> = after.keys().collect();
    assert!(
        new.len() >= old.len(),
        "keys were removed: {old:?} → {new:?}"
    );
    assert_eq!(new[..old.len()], old[..], "key order changed");
    for k in &new[old.len()..] {
        assert!(may_add.contains(&k.as_str()), "unexpected new key {k:?}");
    }
}

/// A token update whose shape depends on the input: FNV-1a of the bytes picks which optional
/// fields are present and gives `expiresAt`.
fn update_from(data: &[u8]) -> TokenUpdate {
    let h = data.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    TokenUpdate {
        access_token: Secret::new("sk-ant-oat01-fuzz-access-token-AAAAAAAAAAAA"),
        refresh_token: (h & 1 != 0)
            .then(|| Secret::new("sk-ant-ort01-fuzz-refresh-token-RRRRRRRR")),
        expires_at: h as i64,
        refresh_token_expires_at: (h & 2 != 0).then_some((h >> 3) as i64),
        scopes: (h & 4 != 0).then(|| vec!["user:inference".to_owned(), "user:profile".to_owned()]),
    }
}
