//! Fuzzes the token endpoint's answer: `oauth::interpret_response` must never panic, whatever
//! the status, headers and body; only a 2xx can be a grant, and a grant's `expiresAt` (and
//! refresh-token expiry, when present) is never before the moment the request was sent.
//!
//! Input layout: bytes 0–1 are the HTTP status (big-endian `u16`, any value), byte 2 holds flags
//! (bit 0: a `Retry-After` header, bit 1: a `Location` header, bit 2: a send time near the end of
//! representable time, to exercise saturation); each header present takes the next line of the
//! input (up to `\n`, as text when it is UTF-8). Everything after that is the body.

#![no_main]

use libfuzzer_sys::fuzz_target;
use std::time::{Duration, UNIX_EPOCH};
use tokend_core::oauth::{Answer, OAuthError, interpret_response};
use tokend_core::schedule::epoch_millis;

fuzz_target!(|data: &[u8]| {
    let (status, flags, mut rest) = match data {
        [a, b, f, rest @ ..] => (u16::from_be_bytes([*a, *b]), *f, rest),
        [a, b] => (u16::from_be_bytes([*a, *b]), 0, &[][..]),
        _ => return,
    };
    let mut header = |present: bool| -> Option<&str> {
        if !present {
            return None;
        }
        let end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
        let line = &rest[..end];
        rest = rest.get(end + 1..).unwrap_or(&[]);
        std::str::from_utf8(line).ok()
    };
    let retry_after = header(flags & 1 != 0);
    let location = header(flags & 2 != 0);
    let answer = Answer {
        status,
        location,
        retry_after,
        body: rest,
    };

    let sent_at = if flags & 4 != 0 {
        // Past i64::MAX milliseconds: epoch_millis saturates, the sums must too.
        UNIX_EPOCH
            .checked_add(Duration::from_secs(i64::MAX as u64 / 100))
            .unwrap_or(UNIX_EPOCH + Duration::from_secs(4_000_000_000))
    } else {
        UNIX_EPOCH + Duration::from_millis(1_764_000_000_123)
    };
    let now = sent_at
        .checked_add(Duration::from_millis(250))
        .unwrap_or(sent_at);
    let sent = epoch_millis(sent_at);

    match interpret_response(&answer, sent_at, now) {
        Ok(grant) => {
            assert!((200..=299).contains(&status), "a grant from HTTP {status}");
            assert!(
                !grant.access_token.is_blank(),
                "a grant without an access token"
            );
            assert!(
                grant.expires_at >= sent,
                "expiresAt {} before the send time {sent}",
                grant.expires_at
            );
            if let Some(at) = grant.refresh_token_expires_at {
                assert!(
                    at >= sent,
                    "refreshTokenExpiresAt {at} before the send time {sent}"
                );
            }
            if let Some(rt) = &grant.refresh_token {
                assert!(!rt.is_blank(), "a blank refresh token is kept as a new one");
            }
        }
        Err(OAuthError::Transient { retry_after, .. }) => {
            // A 2xx that is not a grant, a timeout, a rate limit or a server fault.
            assert!(
                matches!(status, 200..=299 | 408 | 429 | 500..=599),
                "HTTP {status} judged transient"
            );
            // Only a rate-limit or server-fault status carries a Retry-After through.
            if retry_after.is_some() {
                assert!(
                    matches!(status, 408 | 429 | 500..=599),
                    "Retry-After honoured on HTTP {status}"
                );
            }
        }
        Err(OAuthError::Permanent { .. }) => {
            assert!(
                !(200..=399).contains(&status) && !matches!(status, 408 | 429 | 500..=599),
                "HTTP {status} judged permanent"
            );
        }
        Err(OAuthError::Misdirected { .. }) => {
            assert!(
                (300..=399).contains(&status),
                "HTTP {status} judged misdirected"
            );
        }
    }
});
