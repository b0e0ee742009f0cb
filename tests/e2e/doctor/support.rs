//! What the doctor tests share: the fake service managers on PATH, running doctor and finding a
//! check in its JSON, HTTP dates for the clock probe's answers, and a snapshot of everything
//! under a directory that tells whether anything at all changed.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use claude_tokend_e2e::*;
use serde_json::Value;

/// One fake for both managers. `systemctl` answers `show` from the file `$FAKE_SHOW` (else as
/// for a unit that does not exist), or fails as it does without a user bus when `$FAKE_NO_BUS`
/// is set; `launchctl print` answers from `$FAKE_PRINT`, else "Could not find service". Every
/// call is appended to `$FAKE_LOG` when that is set.
const FAKE: &str = r#"#!/bin/sh
name=${0##*/}
[ -n "$FAKE_LOG" ] && printf '%s\n' "$name $*" >> "$FAKE_LOG"
if [ "$name" = systemctl ]; then
  if [ -n "$FAKE_NO_BUS" ]; then
    echo 'Failed to connect to user scope bus via local transport: $DBUS_SESSION_BUS_ADDRESS and $XDG_RUNTIME_DIR not defined' >&2
    exit 1
  fi
  [ -n "$FAKE_SHOW" ] && { cat "$FAKE_SHOW"; exit 0; }
  printf 'LoadState=not-found\nUnitFileState=\nActiveState=inactive\nSubState=dead\nMainPID=0\nExecStart=\nEnvironment=\n'
  exit 0
fi
if [ "$name" = launchctl ]; then
  [ -n "$FAKE_PRINT" ] && { cat "$FAKE_PRINT"; exit 0; }
  echo 'Could not find service "io.github.claude-tokend" in domain for user gui: 501' >&2
  exit 113
fi
exit 1
"#;

/// The directory holding the fakes, written once (through a rename, so no process ever runs a
/// half-written one).
pub fn fakes() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("doctor-fakes");
        fs::create_dir_all(&dir).unwrap();
        for name in ["systemctl", "launchctl"] {
            let tmp = dir.join(format!(".{name}.{}", std::process::id()));
            fs::write(&tmp, FAKE).unwrap();
            fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755)).unwrap();
            fs::rename(&tmp, dir.join(name)).unwrap();
        }
        dir
    })
}

/// PATH with the fakes first, then the system's basics (no real `systemctl` is reached: the
/// fake shadows it).
pub fn fake_path(more: &[&Path]) -> String {
    let mut parts: Vec<String> = vec![fakes().display().to_string()];
    parts.extend(more.iter().map(|p| p.display().to_string()));
    parts.push("/usr/bin:/bin".into());
    parts.join(":")
}

/// `claude-tokend doctor ARGS` in `home`, with the fake managers (systemd's, unless the test
/// says otherwise).
pub fn doctor(home: &TempHome, args: &[&str]) -> Cmd {
    Cmd::new(home)
        .env("PATH", fake_path(&[]))
        .env("CLAUDE_TOKEND_SERVICE_MANAGER", "systemd")
        .arg("doctor")
        .args(args)
}

/// A doctor run's output and its checks (from `--json`).
pub struct Report {
    pub out: Out,
    pub checks: Vec<Value>,
}

impl Report {
    /// Runs `cmd` (which must have `--json`) and reads its checks.
    #[track_caller]
    pub fn run(cmd: Cmd) -> Report {
        let out = cmd.run();
        let doc: Value = serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("doctor --json printed no JSON ({e})\n{}", out.context()));
        let checks = doc["checks"]
            .as_array()
            .unwrap_or_else(|| panic!("no \"checks\" array\n{}", out.context()))
            .clone();
        Report { out, checks }
    }

    /// The first check named `name` (fails the test, with the output, when there is none).
    #[track_caller]
    pub fn check(&self, name: &str) -> &Value {
        self.checks
            .iter()
            .find(|c| c["check"] == name)
            .unwrap_or_else(|| panic!("no {name} check\n{}", self.out.context()))
    }

    /// The check's names, in order.
    pub fn names(&self) -> Vec<String> {
        self.checks
            .iter()
            .map(|c| c["check"].as_str().unwrap_or("?").to_owned())
            .collect()
    }

    /// Fails the test unless check `name` has `result` and its detail contains `needle`.
    #[track_caller]
    pub fn expect(&self, name: &str, result: &str, needle: &str) -> &Value {
        let c = self.check(name);
        let detail = c["detail"].as_str().unwrap_or("");
        self.out.check(
            c["result"] == result && detail.contains(needle),
            format!("the {name} check should be {result} with {needle:?} in its detail: {c:#}"),
        );
        c
    }

    /// The fix of check `name` (empty when null).
    pub fn fix(&self, name: &str) -> String {
        self.check(name)["fix"].as_str().unwrap_or("").to_owned()
    }
}

/// A moment as an HTTP date (RFC 9110's IMF-fixdate), as a server's `Date` header has it.
pub fn http_date(t: SystemTime) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = t.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{}, {day:02} {} {year} {:02}:{:02}:{:02} GMT",
        DAYS[days.rem_euclid(7) as usize],
        MONTHS[(month - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Everything under `root`, each entry with what tells whether it changed: kind, bytes (of
/// files), link target, mode, inode, mtime (of directories too: a file made and removed in
/// one changes it).
pub fn everything(root: &Path) -> BTreeMap<PathBuf, String> {
    fn walk(p: &Path, out: &mut BTreeMap<PathBuf, String>) {
        let Ok(meta) = fs::symlink_metadata(p) else {
            return;
        };
        let t = meta.file_type();
        let content = if t.is_file() {
            format!("{:?}", fs::read(p).ok())
        } else if t.is_symlink() {
            format!("-> {:?}", fs::read_link(p).ok())
        } else {
            String::new()
        };
        out.insert(
            p.to_owned(),
            format!(
                "{t:?} mode {:o} ino {} mtime {}.{:09} {content}",
                meta.mode(),
                meta.ino(),
                meta.mtime(),
                meta.mtime_nsec()
            ),
        );
        if t.is_dir()
            && let Ok(rd) = fs::read_dir(p)
        {
            for e in rd.flatten() {
                walk(&e.path(), out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, &mut out);
    out
}

#[test]
fn http_dates_are_formatted_as_servers_send_them() {
    let at = |secs: u64| http_date(UNIX_EPOCH + std::time::Duration::from_secs(secs));
    assert_eq!(at(0), "Thu, 01 Jan 1970 00:00:00 GMT");
    assert_eq!(at(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
    assert_eq!(at(1_709_251_199), "Thu, 29 Feb 2024 23:59:59 GMT");
}
