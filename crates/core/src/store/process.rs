//! Is a recorded pid still claude-tokend? A pid alone can outlive its process (reused by
//! anything), so the process must also have the recorded start time and run a program named
//! like this one, as the system says: Linux's `/proc`, macOS's `proc_pidinfo` and
//! `proc_pidpath`; elsewhere `kill(pid, 0)` is all there is.

/// Whether `pid` is a live process (not a zombie) that runs claude-tokend and, when
/// `started` is known, started then.
pub fn runs_this_program(pid: u32, started: Option<u64>) -> bool {
    // 0 (and what does not fit a pid_t, read as negative) would name a process group to kill.
    let Some(raw) = libc::pid_t::try_from(pid).ok().filter(|p| *p > 0) else {
        return false;
    };
    // SAFETY: kill(2) with signal 0 only checks that the pid exists and may be signalled.
    let exists = unsafe { libc::kill(raw, 0) } == 0
        || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    if !exists {
        return false;
    }
    system_says(pid, started).unwrap_or(true)
}

/// What `/proc` says: `None` where there is no `/proc` to ask (macOS: `kill` is all there is).
#[cfg(target_os = "linux")]
fn system_says(pid: u32, started: Option<u64>) -> Option<bool> {
    // Unreadable (no `/proc`, or one that hides other users' processes): `kill` has spoken.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (state, start) = parse_stat(&stat)?;
    if matches!(state, 'Z' | 'X' | 'x') {
        return Some(false);
    }
    if started.is_some_and(|s| Some(s) != start) {
        return Some(false);
    }
    Some(program_name_of(pid).is_none_or(|name| is_our_name(&name)))
}

/// What macOS says: the start time (seconds since the epoch) and the program's path.
/// `None` when it will not say (another user's process).
#[cfg(target_os = "macos")]
fn system_says(pid: u32, started: Option<u64>) -> Option<bool> {
    if started.is_some_and(|s| Some(s) != start_time(pid)) {
        return Some(false);
    }
    let mut buf = vec![0u8; libc::PROC_PIDPATHINFO_MAXSIZE as usize];
    // SAFETY: proc_pidpath writes at most `buffersize` bytes into the buffer.
    let n = unsafe {
        libc::proc_pidpath(
            pid as libc::c_int,
            buf.as_mut_ptr().cast(),
            buf.len() as u32,
        )
    };
    if n <= 0 {
        return None;
    }
    buf.truncate(n as usize);
    let path = std::path::PathBuf::from(
        <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&buf),
    );
    Some(
        path.file_name()
            .is_none_or(|n| is_our_name(&n.to_string_lossy())),
    )
}

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
fn system_says(_pid: u32, _started: Option<u64>) -> Option<bool> {
    None
}

/// The start time of `pid` (Linux: clock ticks after boot; macOS: seconds since the epoch),
/// where the system says.
pub fn start_time(pid: u32) -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        parse_stat(&stat)?.1
    }
    #[cfg(target_os = "macos")]
    {
        // SAFETY: zeroed is a valid proc_bsdinfo to be filled in.
        let mut info: libc::proc_bsdinfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::proc_bsdinfo>() as libc::c_int;
        // SAFETY: proc_pidinfo writes at most `size` bytes into `info`.
        let n = unsafe {
            libc::proc_pidinfo(
                pid as libc::c_int,
                libc::PROC_PIDTBSDINFO,
                0,
                (&mut info as *mut libc::proc_bsdinfo).cast(),
                size,
            )
        };
        (n == size).then_some(info.pbi_start_tvsec)
    }
    #[cfg(not(any(target_os = "linux", target_os = "macos")))]
    {
        let _ = pid;
        None
    }
}

/// State and start time from a `/proc/<pid>/stat` line. The command name (2nd field) is in
/// parentheses and may hold spaces and parentheses itself, so fields are counted from the
/// last `)`: state is the 3rd field, start time the 22nd.
pub(crate) fn parse_stat(stat: &str) -> Option<(char, Option<u64>)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    Some((state, fields.nth(18).and_then(|s| s.parse().ok())))
}

/// The file name of the program `pid` runs: its executable, else (another user's process,
/// whose `exe` link cannot be read) the first word of its command line. `None`: unknown.
#[cfg(target_os = "linux")]
fn program_name_of(pid: u32) -> Option<String> {
    let from_exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
    from_exe.or_else(|| {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let argv0 = cmdline.split(|b| *b == 0).next()?;
        let argv0 = std::path::Path::new(
            <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(argv0),
        );
        argv0.file_name().map(|n| n.to_string_lossy().into_owned())
    })
}

/// Whether a program file name is claude-tokend's: this binary's own name, or one that
/// starts with `claude-tokend` (an install under another version's name). A replaced
/// executable reads as `name (deleted)`.
pub(crate) fn is_our_name(name: &str) -> bool {
    let name = name.strip_suffix(" (deleted)").unwrap_or(name);
    let ours = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
    name.starts_with("claude-tokend") || ours.is_some_and(|o| o == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_process_counts_only_when_it_runs_this_program_and_started_when_recorded() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let pid = child.id();
        let started = start_time(pid);
        // `sleep` is alive but is not claude-tokend.
        let is_us = runs_this_program(pid, started);
        child.kill().unwrap();
        child.wait().unwrap();
        if cfg!(target_os = "linux") {
            assert!(started.is_some());
            assert!(!is_us, "sleep was taken for claude-tokend");
            let me = std::process::id();
            assert_ne!(start_time(me), None);
            assert!(
                !runs_this_program(me, start_time(me).map(|s| s + 1)),
                "another start time is another process"
            );
        }
    }

    #[test]
    fn stat_lines_and_program_names_by_table() {
        let line = "123 (claude (x) tokend) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 4242 19";
        assert_eq!(parse_stat(line), Some(('S', Some(4242))));
        assert_eq!(parse_stat("123 (x) Z"), Some(('Z', None)));
        assert_eq!(parse_stat("garbage"), None);
        for (name, ours) in [
            ("claude-tokend", true),
            ("claude-tokend (deleted)", true),
            ("claude-tokend-0.3", true),
            ("sleep", false),
            ("claude", false),
        ] {
            assert_eq!(is_our_name(name), ours, "{name}");
        }
    }
}
