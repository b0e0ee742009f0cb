//! Unit tests of the token endpoint's answers and of scrubbing.

use super::transport::certificate_refused;
use super::*;
use proptest::prelude::*;
use serde_json::Map;
use std::time::UNIX_EPOCH;

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn answer(status: u16, body: &str) -> Result<TokenGrant, OAuthError> {
    interpret_response(
        &Answer {
            status,
            location: Some("https://elsewhere.example/token"),
            retry_after: Some("12"),
            body: body.as_bytes(),
        },
        at(1000),
        at(1005),
    )
}

#[test]
fn full_response_sets_every_owned_field() {
    let g = answer(
        200,
        r#"{"access_token":"sk-ant-oat01-new","refresh_token":"sk-ant-ort01-new",
            "expires_in":28800,"refresh_token_expires_in":2592000,"scope":"user:inference  user:profile"}"#,
    )
    .unwrap();
    assert_eq!(g.access_token.expose(), "sk-ant-oat01-new");
    assert_eq!(g.refresh_token.unwrap().expose(), "sk-ant-ort01-new");
    // Counted from the moment the request was sent, not when the answer arrived.
    assert_eq!(g.expires_at, (1000 + 28800) * 1000);
    assert_eq!(g.refresh_token_expires_at, Some((1000 + 2_592_000) * 1000));
    assert_eq!(g.scopes.unwrap(), ["user:inference", "user:profile"]);
}

#[test]
fn minimal_response_uses_defaults() {
    let g = answer(200, r#"{"access_token":"a"}"#).unwrap();
    assert!(g.refresh_token.is_none());
    assert_eq!(g.expires_at, (1000 + 3600) * 1000);
    assert!(g.refresh_token_expires_at.is_none());
    assert!(g.scopes.is_none());
    let g = answer(200, r#"{"access_token":"a","expires_in":"60"}"#).unwrap();
    assert_eq!(g.expires_at, 1_060_000);
}

#[test]
fn absurd_lifetimes_are_capped_at_a_year_and_a_day() {
    let cap = i64::try_from(super::response::MAX_LIFETIME_SECS * 1000).unwrap();
    for body in [
        r#"{"access_token":"a","expires_in":1e300,"refresh_token_expires_in":1e300}"#,
        r#"{"access_token":"a","expires_in":18446744073709551615,"refresh_token_expires_in":"99999999999"}"#,
    ] {
        let g = answer(200, body).unwrap();
        assert_eq!(g.expires_at, 1_000_000 + cap, "{body}");
        assert_eq!(g.refresh_token_expires_at, Some(1_000_000 + cap), "{body}");
    }
    // A year, as a long-lived login asks for, is kept whole.
    let g = answer(200, r#"{"access_token":"a","expires_in":31536000}"#).unwrap();
    assert_eq!(g.expires_at, 1_000_000 + 31_536_000_000);
}

#[test]
fn an_error_code_is_read_whatever_its_case_or_padding() {
    for body in [
        r#"{"error":"INVALID_GRANT"}"#,
        r#"{"error":"invalid_grant "}"#,
        r#"{"type":"error","error":{"type":" Invalid_Grant","message":"x"}}"#,
    ] {
        match answer(400, body) {
            Err(OAuthError::Permanent { code, .. }) => {
                assert_eq!(code.as_deref(), Some("invalid_grant"), "{body}")
            }
            other => panic!("{body}: {other:?}"),
        }
    }
}

#[test]
fn header_values_keep_utf8_and_lose_control_characters() {
    assert_eq!(
        super::header_value("tökend/1").as_bytes(),
        "tökend/1".as_bytes()
    );
    assert_eq!(
        super::header_value("a\nb\u{7f}c\td").as_bytes(),
        b"a b c\td"
    );
}

#[test]
fn statuses_sort_into_transient_and_permanent() {
    let cases: &[(u16, &str, bool)] = &[
        (200, r#"{"token_type":"bearer"}"#, true),
        (200, r#"{"access_token":""}"#, true),
        (200, "<html>", true),
        (408, "", true),
        (429, "", true),
        (500, "", true),
        (503, r#"{"error":"overloaded"}"#, true),
        (599, "", true),
        (301, "", false),
        (307, "", false),
        (308, "", false),
        (
            400,
            r#"{"error":"invalid_grant","error_description":"Refresh token not found or invalid"}"#,
            false,
        ),
        (401, "", false),
        (403, "", false),
        (404, "", false),
    ];
    for (status, body, transient) in cases {
        let err = answer(*status, body).unwrap_err();
        assert_eq!(
            err.is_transient(),
            *transient,
            "HTTP {status} {body}: {err}"
        );
    }
}

#[test]
fn errors_say_what_happened() {
    let err = answer(
        400,
        r#"{"error":"invalid_grant","error_description":"Refresh token not found"}"#,
    )
    .unwrap_err();
    assert_eq!(
        err,
        OAuthError::Permanent {
            code: Some("invalid_grant".into()),
            refusal: Box::new(Refusal {
                reason: "the token endpoint refused the request: HTTP 400: invalid_grant (Refresh token not found)".into(),
                status: 400,
                detail: Some("Refresh token not found".into()),
                html: false,
            }),
        }
    );
    let err = answer(301, "").unwrap_err().to_string();
    assert!(
        err.contains("--token-url https://elsewhere.example/token"),
        "{err}"
    );
    let err = answer(
        429,
        r#"{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}"#,
    )
    .unwrap_err();
    assert_eq!(
        err,
        OAuthError::Transient {
            reason: "the token endpoint answered HTTP 429: rate_limit_error (slow down)".into(),
            retry_after: Some(Duration::from_secs(12)),
        }
    );
}

/// The OAuth code of a refusal, or `None` for an answer that is no refusal.
fn code_of(status: u16, body: &str) -> Option<String> {
    match answer(status, body) {
        Err(OAuthError::Permanent { code, .. }) => code,
        other => panic!("HTTP {status} {body}: not a refusal: {other:?}"),
    }
}

#[test]
fn the_error_code_is_read_from_the_flat_and_the_nested_shape() {
    let cases = [
        (r#"{"error":"invalid_client"}"#, Some("invalid_client")),
        (
            r#"{"type":"error","error":{"type":"invalid_client","message":"Client not found"}}"#,
            Some("invalid_client"),
        ),
        (
            r#"{"type":"error","error":{"type":"invalid_grant","message":"Invalid 'code' in request."}}"#,
            Some("invalid_grant"),
        ),
        (r#"{"error":{"message":"no type"}}"#, None),
        (r#"{"error":""}"#, None),
        (r#"{"error":7}"#, None),
        ("", None),
        ("<html><body>Forbidden</body></html>", None),
    ];
    for (body, want) in cases {
        assert_eq!(code_of(400, body).as_deref(), want, "{body}");
    }
    let err = answer(
        400,
        r#"{"type":"error","error":{"type":"invalid_client","message":"Client not found"}}"#,
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .ends_with(": invalid_client (Client not found)"),
        "{err}"
    );
}

#[test]
fn a_web_page_is_told_from_the_endpoints_json() {
    for (body, html) in [
        ("<!DOCTYPE html><html><title>403</title></html>", true),
        ("\n  <html><body>Access denied</body></html>", true),
        (r#"{"error":"access_denied"}"#, false),
        ("Forbidden", false),
    ] {
        let Err(OAuthError::Permanent { refusal, .. }) = answer(403, body) else {
            panic!("{body}: not a refusal");
        };
        assert_eq!(refusal.html, html, "{body}");
        assert_eq!(refusal.status, 403);
        assert_eq!(refusal.reason.contains("an HTML page"), html, "{body}");
    }
}

#[test]
fn server_text_in_a_refusal_is_escaped_and_on_one_line() {
    let err = answer(
        400,
        r#"{"error":"invalid_grant","error_description":"a\nb\u001b[2J\u202ec"}"#,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.ends_with(r"invalid_grant (a b\u{1b}[2J\u{202e}c)"),
        "{err}"
    );
}

#[test]
fn a_redirect_names_where_it_leads_when_that_is_a_url() {
    let redirect = |location: Option<&str>| {
        interpret_response(
            &Answer {
                status: 307,
                location,
                retry_after: None,
                body: b"",
            },
            at(0),
            at(0),
        )
        .unwrap_err()
        .to_string()
    };
    let told = redirect(Some("https://auth.example/v1/oauth/token2"));
    assert!(
        told.contains("--token-url https://auth.example/v1/oauth/token2"),
        "{told}"
    );
    let told = redirect(Some("mailto:x@example.test\u{1b}[2J"));
    assert!(!told.contains("--token-url mailto"), "{told}");
    assert!(told.contains(r"\u{1b}"), "escaped: {told}");
    assert!(redirect(None).contains("no Location"));
}

#[test]
fn a_location_is_resolved_against_the_token_url() {
    let base = Url::parse("https://auth.example/v1/oauth/token").unwrap();
    let cases: [(&[u8], &str); 4] = [
        (b"/v1/oauth/token2", "https://auth.example/v1/oauth/token2"),
        (b"token2", "https://auth.example/v1/oauth/token2"),
        (b"https://other.example/t", "https://other.example/t"),
        // Raw UTF-8 from a server: kept, percent-encoded as a URL writes it.
        (
            "https://auth.example/t\u{fc}".as_bytes(),
            "https://auth.example/t%C3%BC",
        ),
    ];
    for (bytes, want) in cases {
        assert_eq!(
            super::resolve_location(&base, bytes),
            want,
            "{}",
            String::from_utf8_lossy(bytes)
        );
    }
}

#[test]
fn scrub_masks_sent_secrets_and_token_shapes() {
    let rt = Secret::new("sk-ant-ort01-short-but-sent-XYZW");
    let long = "A".repeat(50);
    let text = format!(
        "echo sk-ant-ort01-short-but-sent-XYZW and {long}, id 9d1c250a-e61b-44d9-88ed-5944d1962f5e"
    );
    let out = scrub(&text, &[&rt]);
    assert!(!out.contains("short-but-sent"), "{out}");
    assert!(!out.contains(&long), "{out}");
    assert!(
        out.contains("9d1c250a-e61b-44d9-88ed-5944d1962f5e"),
        "a client id stays readable: {out}"
    );
}

#[test]
fn certificate_refusals_are_sorted_by_whether_waiting_helps() {
    use rustls::CertificateError as C;
    let detail = "invalid peer certificate";
    for clock in [C::Expired, C::NotValidYet] {
        let e = certificate_refused(&clock, detail);
        assert!(e.is_transient(), "{clock:?}: {e}");
        assert!(e.to_string().contains("clock"), "{e}");
    }
    for setting in [C::UnknownIssuer, C::NotValidForName, C::BadSignature] {
        let e = certificate_refused(&setting, detail);
        assert!(
            matches!(e, OAuthError::Misdirected { .. }),
            "{setting:?}: {e}"
        );
        let text = e.to_string();
        assert!(
            text.contains("TLS certificate") && text.contains(CA_HINT),
            "{text}"
        );
    }
    assert!(
        certificate_refused(&C::UnknownIssuer, detail)
            .to_string()
            .contains("not trusted")
    );
}

proptest! {
    /// Any answer is a grant or a sorted error; never a panic.
    #[test]
    fn interpret_never_panics(status in 100u16..600, body in prop::collection::vec(any::<u8>(), 0..200), ra in proptest::option::of(".{0,30}")) {
        let _ = interpret_response(
            &Answer { status, location: None, retry_after: ra.as_deref(), body: &body },
            at(0), at(0));
    }

    /// Well-formed JSON responses with arbitrary field values never panic either.
    #[test]
    fn parse_grant_never_panics(expires in any::<i64>(), rt_expires in any::<f64>(), scope in ".{0,40}") {
        let mut map = Map::new();
        map.insert("access_token".into(), "x".into());
        map.insert("expires_in".into(), expires.into());
        map.insert("refresh_token_expires_in".into(), json!(rt_expires));
        map.insert("scope".into(), scope.into());
        let g = parse_grant(&map, SystemTime::now()).unwrap();
        prop_assert!(g.expires_at > 0);
    }

    #[test]
    fn scrub_never_leaks_long_tokens(token in "[A-Za-z0-9_-]{40,80}", before in "[ :,]{0,3}[a-z ]{0,10}", after in "[ :,]{1,3}[a-z ]{0,10}") {
        let out = scrub(&format!("{before}{token}{after}"), &[]);
        prop_assert!(!out.contains(&token));
    }
}
