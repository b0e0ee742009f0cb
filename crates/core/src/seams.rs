//! Fault-injection seams for the end-to-end tests: crash the process at a named step of the
//! refresh path, make the rename fail as it does on a bind-mounted file, or pause at a named step.
//!
//! They exist only in debug builds with the `test-seams` feature (which only the test suite
//! turns on). Everywhere else every function here is an empty inline that reads no environment,
//! so no release binary can be steered by them.

#[cfg(all(feature = "test-seams", debug_assertions))]
mod active {
    use std::time::Duration;

    fn wanted(step: &str) -> bool {
        std::env::var("CLAUDE_TOKEND_TEST_CRASH_AT").is_ok_and(|v| v == step)
    }

    /// Aborts the process (no destructors, no cleanup: as `kill -9` would) at `step` when
    /// `CLAUDE_TOKEND_TEST_CRASH_AT` names it.
    pub fn crash_point(step: &str) {
        if wanted(step) {
            std::process::abort();
        }
    }

    /// Aborts while the request is in flight: `CLAUDE_TOKEND_TEST_CRASH_DELAY_MS` (default
    /// 200) after `step`, from another thread, so the request has gone out but no answer is in.
    pub fn crash_in_flight(step: &str) {
        if wanted(step) {
            let ms = std::env::var("CLAUDE_TOKEND_TEST_CRASH_DELAY_MS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(200);
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(ms));
                std::process::abort();
            });
        }
    }

    /// `CLAUDE_TOKEND_TEST_LOCK_WAIT_LIMIT_MS=N`: one-shot commands stop waiting for other
    /// processes' locks after N ms instead of `limit` (2 minutes is too long for a test).
    pub fn lock_wait_limit(limit: Duration) -> Duration {
        std::env::var("CLAUDE_TOKEND_TEST_LOCK_WAIT_LIMIT_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map_or(limit, Duration::from_millis)
    }

    /// `CLAUDE_TOKEND_TEST_AUTO_AS_MACOS=1`: `--store auto` decides as it does on macOS (the
    /// Keychain item first), so its rules can be tested on Linux against the fake `security`.
    pub fn auto_as_macos() -> bool {
        std::env::var_os("CLAUDE_TOKEND_TEST_AUTO_AS_MACOS").is_some_and(|v| v == "1")
    }

    /// `CLAUDE_TOKEND_TEST_HOUR_MS=N`: an hour of the daemon's notification timing (12 h
    /// between login-needed repeats, a day between login-expiring ones, 30 min before
    /// refresh-failing) lasts N ms, so tests can watch the rules play out.
    pub fn notify_hour(hour: Duration) -> Duration {
        std::env::var("CLAUDE_TOKEND_TEST_HOUR_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map_or(hour, Duration::from_millis)
    }

    /// `CLAUDE_TOKEND_TEST_FLOOR_MS=N`: the floor under the refresh rate is N ms instead of
    /// `floor`, so the soak and kill loops can still refresh back to back.
    pub fn floor(floor: Duration) -> Duration {
        std::env::var("CLAUDE_TOKEND_TEST_FLOOR_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map_or(floor, Duration::from_millis)
    }

    /// `CLAUDE_TOKEND_TEST_SERVICE_CALL_MS=N`: `service` waits N ms for a `systemctl` or
    /// `launchctl` call instead of `limit` (30 s is too long for a test of a hung manager).
    pub fn service_call_limit(limit: Duration) -> Duration {
        std::env::var("CLAUDE_TOKEND_TEST_SERVICE_CALL_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map_or(limit, Duration::from_millis)
    }

    /// `CLAUDE_TOKEND_TEST_LOOPBACK_WAIT_MS=N`: `login --loopback` waits N ms for the browser
    /// instead of `limit` (5 minutes is too long for a test of what it says then).
    pub fn loopback_wait(limit: Duration) -> Duration {
        std::env::var("CLAUDE_TOKEND_TEST_LOOPBACK_WAIT_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map_or(limit, Duration::from_millis)
    }

    /// `CLAUDE_TOKEND_TEST_PACKAGED_UNIT_DIR=DIR`: `service` looks for a package's systemd user
    /// unit in DIR instead of `/usr/lib/systemd/user`, which a test cannot write.
    pub fn packaged_unit_dir() -> Option<std::path::PathBuf> {
        std::env::var_os("CLAUDE_TOKEND_TEST_PACKAGED_UNIT_DIR")
            .filter(|v| !v.is_empty())
            .map(std::path::PathBuf::from)
    }

    /// `CLAUDE_TOKEND_TEST_RENAME_ERRNO=N`: the rename fails with errno N (16 EBUSY, 18 EXDEV,
    /// 13 EACCES). With `CLAUDE_TOKEND_TEST_RENAME_FAIL_WHILE=PATH`, only while PATH exists, so
    /// a test can let a failing save succeed later.
    pub fn rename_error() -> Option<std::io::Error> {
        if let Some(marker) = std::env::var_os("CLAUDE_TOKEND_TEST_RENAME_FAIL_WHILE")
            && !std::path::Path::new(&marker).exists()
        {
            return None;
        }
        std::env::var("CLAUDE_TOKEND_TEST_RENAME_ERRNO")
            .ok()
            .and_then(|v| v.parse().ok())
            .map(std::io::Error::from_raw_os_error)
    }

    /// `CLAUDE_TOKEND_TEST_PAUSE_AT=STEP` with `CLAUDE_TOKEND_TEST_PAUSE_FILE=PATH`: at `step`
    /// the process creates PATH, then waits (at most 10 s) until the test removes it, so the test
    /// acts (sends a signal, swaps a file) at exactly that point and not by sleep-and-hope.
    pub fn pause_at(step: &str) {
        if !std::env::var("CLAUDE_TOKEND_TEST_PAUSE_AT").is_ok_and(|v| v == step) {
            return;
        }
        let Some(file) = std::env::var_os("CLAUDE_TOKEND_TEST_PAUSE_FILE") else {
            return;
        };
        let file = std::path::Path::new(&file);
        let _ = std::fs::write(file, step);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while file.exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

#[cfg(all(feature = "test-seams", debug_assertions))]
pub use active::*;

#[cfg(not(all(feature = "test-seams", debug_assertions)))]
mod inert {
    #[inline(always)]
    pub fn crash_point(_step: &str) {}
    #[inline(always)]
    pub fn crash_in_flight(_step: &str) {}
    #[inline(always)]
    pub fn lock_wait_limit(limit: std::time::Duration) -> std::time::Duration {
        limit
    }
    #[inline(always)]
    pub fn floor(floor: std::time::Duration) -> std::time::Duration {
        floor
    }
    #[inline(always)]
    pub fn notify_hour(hour: std::time::Duration) -> std::time::Duration {
        hour
    }
    #[inline(always)]
    pub fn auto_as_macos() -> bool {
        false
    }
    #[inline(always)]
    pub fn service_call_limit(limit: std::time::Duration) -> std::time::Duration {
        limit
    }
    #[inline(always)]
    pub fn loopback_wait(limit: std::time::Duration) -> std::time::Duration {
        limit
    }
    #[inline(always)]
    pub fn packaged_unit_dir() -> Option<std::path::PathBuf> {
        None
    }
    #[inline(always)]
    pub fn rename_error() -> Option<std::io::Error> {
        None
    }
    #[inline(always)]
    pub fn pause_at(_step: &str) {}
}

#[cfg(not(all(feature = "test-seams", debug_assertions)))]
pub use inert::*;
