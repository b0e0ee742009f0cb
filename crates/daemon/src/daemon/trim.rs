//! After start-up, the daemon gives back the pages of its own program file it mapped in while
//! starting (argument parsing, help text, set-up code) and will not run again: the same idea as
//! the kernel's "freeing unused kernel memory" after boot. Only mappings of the program file
//! that hold no modified page (no private dirty or anonymous pages, so nothing can be lost) are
//! released, with `MADV_DONTNEED`: the kernel maps a page in again from the file if it is ever
//! touched, so this changes how much memory the idle daemon holds, never what it does.

/// Releases the clean pages of the running program's own file mappings.
pub fn release_startup_pages() {
    #[cfg(target_os = "linux")]
    linux::release();
}

#[cfg(target_os = "linux")]
mod linux {
    pub fn release() {
        let Ok(exe) = std::fs::read_link("/proc/self/exe") else {
            return;
        };
        let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
            return;
        };
        let exe = exe.to_string_lossy().into_owned();
        for (start, end, clean) in program_mappings(&smaps, &exe) {
            if clean {
                // SAFETY: [start, end) is a whole mapping of our own program file with no
                // modified page; MADV_DONTNEED on it only drops page-table entries, which the
                // kernel refills from the file on the next access.
                unsafe {
                    libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
                }
            }
        }
    }

    /// The pathname of a mapping's header line: everything after its fifth field (it may
    /// hold spaces).
    fn pathname(line: &str) -> &str {
        let mut rest = line.trim_start();
        for _ in 0..5 {
            rest = rest
                .find(char::is_whitespace)
                .map_or("", |at| rest[at..].trim_start());
        }
        rest.trim_end()
    }

    /// Each mapping of `exe`: its range and whether it holds no private dirty or anonymous page
    /// and is not writable.
    pub(super) fn program_mappings(smaps: &str, exe: &str) -> Vec<(usize, usize, bool)> {
        let mut out = Vec::new();
        let mut current: Option<(usize, usize, bool)> = None;
        for line in smaps.lines() {
            let mut fields = line.split_whitespace();
            let first = fields.next().unwrap_or("");
            if let Some((a, b)) = first.split_once('-')
                && let (Ok(start), Ok(end)) =
                    (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
            {
                if let Some(m) = current.take() {
                    out.push(m);
                }
                let perms = fields.next().unwrap_or("");
                if pathname(line) == exe {
                    current = Some((start, end, !perms.contains('w')));
                }
                continue;
            }
            if let Some(m) = current.as_mut()
                && matches!(first, "Private_Dirty:" | "Anonymous:" | "Shared_Dirty:")
                && fields.next().is_some_and(|kb| kb != "0")
            {
                m.2 = false;
            }
        }
        out.extend(current);
        out
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::linux::program_mappings;

    #[test]
    fn only_clean_read_only_mappings_of_the_program_are_released() {
        let smaps = "\
5600-5700 r--p 00000000 fe:00 1 /bin/tokend
Rss: 128 kB
Private_Dirty: 0 kB
Anonymous: 0 kB
5700-5900 r-xp 00100000 fe:00 1 /bin/tokend
Rss: 900 kB
Private_Dirty: 0 kB
Anonymous: 0 kB
5900-5a00 r--p 00300000 fe:00 1 /bin/tokend
Rss: 100 kB
Private_Dirty: 100 kB
Anonymous: 100 kB
5a00-5b00 rw-p 00400000 fe:00 1 /bin/tokend
Rss: 8 kB
Private_Dirty: 0 kB
7f00-7f10 r-xp 00000000 fe:00 2 /usr/lib/libc.so.6
Rss: 900 kB
Private_Dirty: 0 kB
8000-8100 r-xp 00000000 fe:00 3                   /opt/my tools/tokend
Rss: 4 kB
";
        assert_eq!(
            program_mappings(smaps, "/bin/tokend"),
            [
                (0x5600, 0x5700, true),
                (0x5700, 0x5900, true),
                // Relocated (dirty): dropping it would lose the relocations.
                (0x5900, 0x5a00, false),
                // Writable: never.
                (0x5a00, 0x5b00, false),
            ]
        );
        assert!(program_mappings(smaps, "/other").is_empty());
        assert_eq!(
            program_mappings(smaps, "/opt/my tools/tokend"),
            [(0x8000, 0x8100, true)],
            "a path with a space"
        );
    }
}
