//! Parsing and checking of the settings every command shares: durations (`90s`, `15m`, `1h`) and
//! endpoint URLs (https, or http only to a loopback host). The checks run before anything is
//! sent, so a bad setting costs nothing but an error message.

use std::net::IpAddr;
use std::time::Duration;

pub use reqwest::Url;

/// Claude Code refreshes in the last 5 minutes; a shorter lead than that races it.
pub const CLAUDE_CODE_MARGIN: Duration = Duration::from_secs(5 * 60);

/// The longest refresh lead: access tokens live about 8 hours, and a lead near that would refresh
/// again as soon as a refresh is done.
pub const MAX_REFRESH_LEAD: Duration = Duration::from_secs(4 * 3600);

/// The longest retry budget of a one-shot command. A day already outlasts any cron interval and
/// any outage worth waiting out in one process; a longer value is a typo, and an unbounded one
/// would overflow the monotonic deadline it sets (`Instant + Duration` panics).
pub const MAX_RETRY_BUDGET: Duration = Duration::from_secs(86_400);

/// Parses `90s`, `15m`, `1h`, `1h30m`, `500ms`, `2d`. A bare number is refused: `15` could mean
/// seconds or minutes, and guessing wrong would be silent.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    read_duration(text).map_err(|e| e.unwrap_or_else(|| format!("`{}` is too large", text.trim())))
}

/// `parse_duration`, with `Err(None)` for a well-formed duration too large to hold. A refusal
/// says what is wrong with the text (a fraction, a space, a sign, a missing or unknown unit)
/// and, where one exists, the exact way to write it.
fn read_duration(text: &str) -> Result<Duration, Option<String>> {
    let hint = "write a number and a unit, like 90s, 15m or 1h";
    let s = text.trim();
    if s.is_empty() {
        return Err(Some(format!("empty duration: {hint}")));
    }
    if s.starts_with('-') {
        return Err(Some(format!("`{s}` is negative: a duration is 0s or more")));
    }
    if s.contains(char::is_whitespace) {
        let joined: String = s.split_whitespace().collect();
        let instead = match read_duration(&joined) {
            Ok(_) | Err(None) => format!(": write {joined}"),
            Err(Some(_)) => String::new(),
        };
        return Err(Some(format!(
            "`{s}` has a space in it; a number and its unit are written together, with no \
             space{instead}"
        )));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if rest[digits..].starts_with('.') {
            return Err(Some(fraction(s)));
        }
        if digits == 0 {
            return Err(Some(format!("`{s}` is not a duration: {hint}")));
        }
        let (number, after) = rest.split_at(digits);
        let unit_len = after.bytes().take_while(u8::is_ascii_alphabetic).count();
        let (unit, after) = after.split_at(unit_len);
        rest = after;
        let secs_per_unit = match unit {
            "ms" => None,
            "s" => Some(1),
            "m" => Some(60),
            "h" => Some(3600),
            "d" => Some(86_400),
            "" => {
                return Err(Some(match rest.chars().next() {
                    None => format!("`{s}` has no unit: {hint}"),
                    Some(c) => {
                        format!("`{c}` in `{s}` is not a unit (use ms, s, m, h or d): {hint}")
                    }
                }));
            }
            other => {
                return Err(Some(format!(
                    "`{other}` is not a unit (use ms, s, m, h or d): {hint}"
                )));
            }
        };
        // Only digits: the one way this parse fails is a number too large for a u64. Checked,
        // not saturating, from here on: a number too large to hold is refused rather than
        // silently read as another one.
        let n: u64 = number.parse().map_err(|_| None)?;
        let piece = match secs_per_unit {
            None => Some(Duration::from_millis(n)),
            Some(per) => n.checked_mul(per).map(Duration::from_secs),
        };
        total = piece.and_then(|p| total.checked_add(p)).ok_or(None)?;
    }
    Ok(total)
}

/// The message for a duration with a fraction (`1.5h`): not accepted, and, when the text is one
/// number and unit that a smaller unit holds whole, that exact spelling (`90m`).
fn fraction(s: &str) -> String {
    let refusal = format!(
        "`{s}` has a fraction, which is not accepted (use whole numbers, in a smaller unit \
         where needed"
    );
    match whole_in_smaller_unit(s) {
        Some(instead) => format!("{refusal}): write {instead}"),
        None => format!("{refusal}, like 90m for 1.5h)"),
    }
}

/// `1.5h` → `90m`, `0.5m` → `30s`, `1.5s` → `1500ms`: the first smaller unit that holds the
/// value whole, for a text that is exactly one decimal number and one unit.
fn whole_in_smaller_unit(s: &str) -> Option<String> {
    let split = s.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = s.split_at(split);
    let (int, frac) = number.split_once('.')?;
    if int.is_empty() && frac.is_empty()
        || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
        || frac.len() > 18
    {
        return None;
    }
    let scale = 10u128.pow(u32::try_from(frac.len()).ok()?);
    let int: u128 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let frac: u128 = if frac.is_empty() {
        0
    } else {
        frac.parse().ok()?
    };
    // The value, in `unit`, is numerator / scale.
    let mut numerator = int.checked_mul(scale)?.checked_add(frac)?;
    let smaller: &[(&str, u128, &str)] = &[
        ("d", 24, "h"),
        ("h", 60, "m"),
        ("m", 60, "s"),
        ("s", 1000, "ms"),
    ];
    let mut at = smaller.iter().position(|(u, _, _)| *u == unit)?;
    while let Some((_, factor, next)) = smaller.get(at) {
        numerator = numerator.checked_mul(*factor)?;
        if numerator % scale == 0 {
            return Some(format!("{}{next}", numerator / scale));
        }
        at += 1;
    }
    None
}

/// A duration no longer than `max` (written `max_text`); the message names the allowed range and
/// why there is one.
fn parse_at_most(
    text: &str,
    (max, max_text): (Duration, &str),
    why: &str,
) -> Result<Duration, String> {
    match read_duration(text) {
        Ok(d) if d <= max => Ok(d),
        Ok(_) | Err(None) => Err(format!(
            "`{}` is too long: allowed from 0s to {max_text}; {why}",
            text.trim()
        )),
        Err(Some(message)) => Err(message),
    }
}

/// The refresh lead (`--refresh-before`): at most [`MAX_REFRESH_LEAD`]. A lead under Claude
/// Code's 5 minutes is allowed; the caller warns about it.
pub fn parse_refresh_lead(text: &str) -> Result<Duration, String> {
    parse_at_most(
        text,
        (MAX_REFRESH_LEAD, "4h"),
        "access tokens live about 8 hours, and a longer lead would refresh almost without pause",
    )
}

/// The retry budget of one-shot commands (`--retry-budget`): at most [`MAX_RETRY_BUDGET`].
pub fn parse_retry_budget(text: &str) -> Result<Duration, String> {
    parse_at_most(
        text,
        (MAX_RETRY_BUDGET, "1d"),
        "a longer budget would outlast any cron interval",
    )
}

/// Formats a duration the way `parse_duration` reads it, coarsely: `7h 12m`, `3m 5s`, `42s`.
pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    let (days, hours, mins, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (days, hours, mins) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{mins}m {s}s"),
        (0, _, _) => format!("{hours}h {mins}m"),
        _ => format!("{days}d {hours}h"),
    }
}

/// Formats a duration exactly, the way `parse_duration` reads it back, in whole units from the
/// largest: `500ms`, `90s` as `1m30s`, `4m59s`, `1h`, `1d2h`. For messages about a setting the
/// user gave, where rounding `500ms` to `0s` (or spelling `4m59s` as `299s`) would name a value
/// they never wrote.
pub fn format_duration_exact(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    let mut rest = ms;
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
        ("ms", 1),
    ] {
        if rest >= size {
            out.push_str(&format!("{}{unit}", rest / size));
            rest %= size;
        }
    }
    out
}

/// Checks an endpoint URL: `https`, or `http` only when the host is loopback (the tests' own
/// endpoint). The body of every request carries a secret, so plain http anywhere else is refused.
pub fn parse_endpoint_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text.trim()).map_err(|e| format!("`{text}` is not a URL: {e}"))?;
    match url.scheme() {
        "https" => Ok(url),
        "http" if is_loopback(&url) => Ok(url),
        "http" => Err(format!(
            "`{text}` uses plain http, which would send tokens unencrypted; \
             use an https:// URL (http is allowed only for 127.0.0.1, ::1 and localhost)"
        )),
        other => Err(format!(
            "`{text}` has scheme `{other}`; use an https:// URL"
        )),
    }
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn durations_by_table() {
        let ok = [
            ("90s", 90),
            ("15m", 900),
            ("1h", 3600),
            ("1h30m", 5400),
            (" 2d ", 172_800),
            ("0s", 0),
        ];
        for (text, secs) in ok {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_secs(secs)),
                "{text}"
            );
        }
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        for bad in [
            "",
            "15",
            "m",
            "1x",
            "1.5h",
            "-3s",
            "1h 30m",
            "99999999999999999999s",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be refused");
        }
    }

    /// A nearly right duration is refused with what is wrong and, where there is one, the
    /// exact way to write it.
    #[test]
    fn refusals_say_what_is_wrong_by_table() {
        let cases = [
            (
                "1.5h",
                "fraction, which is not accepted",
                Some(": write 90m"),
            ),
            ("2.25h", "fraction", Some("135m")),
            ("0.5m", "fraction", Some("30s")),
            (".5m", "fraction", Some("30s")),
            ("1.5s", "fraction", Some("1500ms")),
            ("1.5d", "fraction", Some("36h")),
            ("1.0001s", "fraction", None),
            ("1h0.5m", "fraction", None),
            ("1.5ms", "fraction", None),
            ("1.5x", "fraction", None),
            ("90 s", "space", Some(": write 90s")),
            ("1h 30m", "space", Some(": write 1h30m")),
            ("1 x", "space", None),
            ("-3m", "negative", None),
            ("1,5h", "`,` in `1,5h` is not a unit", None),
            ("15", "has no unit", None),
            ("1x", "`x` is not a unit", None),
        ];
        for (text, says, instead) in cases {
            let err = parse_duration(text).unwrap_err();
            assert!(err.contains(says), "{text}: {err}");
            match instead {
                Some(i) => assert!(err.contains(i), "{text}: {err}"),
                None => assert!(
                    !err.split(": write ")
                        .skip(1)
                        .any(|after| after.starts_with(|c: char| c.is_ascii_digit())),
                    "{text} has no exact spelling to suggest: {err}"
                ),
            }
            // Under the bounds, the same words.
            assert_eq!(parse_refresh_lead(text).unwrap_err(), err, "{text}");
        }
    }

    #[test]
    fn the_refresh_lead_is_at_most_four_hours() {
        assert_eq!(parse_refresh_lead("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_refresh_lead("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_refresh_lead("4h"), Ok(MAX_REFRESH_LEAD));
        assert_eq!(parse_refresh_lead("3h60m"), Ok(MAX_REFRESH_LEAD));
        for long in ["4h1s", "4h0m0s1ms", "5h", "1d", "240m1s"] {
            let err = parse_refresh_lead(long).unwrap_err();
            assert!(err.contains("from 0s to 4h"), "{long}: {err}");
        }
        assert!(parse_refresh_lead("banana").is_err());
    }

    #[test]
    fn the_retry_budget_is_at_most_a_day() {
        assert_eq!(parse_retry_budget("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_retry_budget("1d"), Ok(MAX_RETRY_BUDGET));
        for long in ["1d1ms", "25h", "999999999999999d", "18446744073709551615s"] {
            let err = parse_retry_budget(long).unwrap_err();
            assert!(err.contains("from 0s to 1d"), "{long}: {err}");
        }
    }

    #[test]
    fn durations_too_large_to_hold_are_refused() {
        for huge in [
            "18446744073709551616s",
            "213503982334602d",
            "18446744073709551615s1s",
            "9223372036854775807h9223372036854775807h",
        ] {
            let err = parse_duration(huge).unwrap_err();
            assert!(err.contains("too large"), "{huge}: {err}");
        }
        assert_eq!(
            parse_duration("18446744073709551615s"),
            Ok(Duration::from_secs(u64::MAX))
        );
    }

    /// The value a duration's pieces add up to, in milliseconds, computed wide enough that it
    /// cannot overflow.
    fn exact_millis(pieces: &[(u64, &str)]) -> u128 {
        pieces
            .iter()
            .map(|&(n, unit)| {
                let per: u128 = match unit {
                    "ms" => 1,
                    "s" => 1000,
                    "m" => 60_000,
                    "h" => 3_600_000,
                    _ => 86_400_000,
                };
                u128::from(n) * per
            })
            .sum()
    }

    #[test]
    fn exact_durations_by_table() {
        for (d, text) in [
            (Duration::from_millis(500), "500ms"),
            (Duration::from_millis(1500), "1s500ms"),
            (Duration::ZERO, "0s"),
            (Duration::from_secs(90), "1m30s"),
            (Duration::from_secs(240), "4m"),
            (Duration::from_secs(299), "4m59s"),
            (Duration::from_secs(3600), "1h"),
            (Duration::from_secs(5400), "1h30m"),
            (Duration::from_secs(86_400 * 2), "2d"),
            (Duration::from_millis(86_400_000 + 1), "1d1ms"),
        ] {
            assert_eq!(format_duration_exact(d), text);
        }
    }

    proptest! {
        /// What `format_duration_exact` writes reads back as the same duration.
        #[test]
        fn exact_durations_read_back(ms in 0u64..(400 * 86_400_000)) {
            let d = Duration::from_millis(ms);
            prop_assert_eq!(parse_duration(&format_duration_exact(d)), Ok(d));
        }

        /// Any text at all: a duration or a message, never a panic.
        #[test]
        fn parse_duration_never_panics(text in any::<String>()) {
            let _ = parse_duration(&text);
            let _ = parse_refresh_lead(&text);
            let _ = parse_retry_budget(&text);
        }

        /// Numbers of any size with each unit: the exact value, or "too large"; never a value
        /// that wrapped or saturated.
        #[test]
        fn huge_numbers_are_exact_or_refused(
            pieces in prop::collection::vec(
                (any::<u64>(), prop::sample::select(vec!["ms", "s", "m", "h", "d"])),
                1..4,
            ),
        ) {
            let text: String = pieces.iter().map(|(n, u)| format!("{n}{u}")).collect();
            let exact = exact_millis(&pieces);
            match parse_duration(&text) {
                Ok(d) => prop_assert_eq!(d.as_millis(), exact, "{}", text),
                Err(e) => {
                    prop_assert!(e.contains("too large"), "{}: {}", text, e);
                    prop_assert!(exact > Duration::MAX.as_millis(), "{} fits, yet: {}", text, e);
                }
            }
        }
    }

    #[test]
    fn format_by_table() {
        let cases = [
            (42, "42s"),
            (185, "3m 5s"),
            (25_920, "7h 12m"),
            (90_000, "1d 1h"),
        ];
        for (secs, want) in cases {
            assert_eq!(format_duration(Duration::from_secs(secs)), want);
        }
    }

    #[test]
    fn urls_by_table() {
        let cases = [
            ("https://platform.claude.com/v1/oauth/token", true),
            ("http://127.0.0.1:8080/token", true),
            ("http://127.8.9.1/token", true),
            ("http://[::1]:99/token", true),
            ("http://localhost:1/token", true),
            ("http://LOCALHOST/token", true),
            ("http://example.com/token", false),
            ("http://127.0.0.1.nip.io/token", false),
            ("http://localhost.example.com/", false),
            ("ftp://127.0.0.1/", false),
            ("not a url", false),
        ];
        for (text, ok) in cases {
            assert_eq!(parse_endpoint_url(text).is_ok(), ok, "{text}");
        }
        assert!(
            parse_endpoint_url("http://example.com/")
                .unwrap_err()
                .contains("https")
        );
    }
}
