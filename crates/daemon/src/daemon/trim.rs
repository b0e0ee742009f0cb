//! After start-up, the daemon gives back the pages of its own program file it mapped in while
//! starting (argument parsing, help text, set-up code) and will not run again: the same idea as
//! the kernel's "freeing unused kernel memory" after boot. It owns one promise (CONTRACT.md,
//! "Memory tricks never risk a crash"): a page is dropped only when it is provably the file's
//! own page, and when that cannot be shown nothing is dropped.
//!
//! Why the proof has two parts. `MADV_DONTNEED` on a private file mapping throws away whatever
//! the page table holds and lets the next touch read the page from the file again. For a page
//! of the page cache (the file's own page) that changes nothing. For a private copy it loses
//! data: a page the dynamic loader relocated (RELRO: `r--p`, yet a private anonymous copy), a
//! breakpoint, or such a copy swapped out (then it is not even resident: only `Swap:` shows
//! it). So:
//!
//! 1. `/proc/self/smaps`, per mapping: not writable, and every counter that can show a private
//!    copy is zero (`Private_Dirty`, `Shared_Dirty`, `Pss_Dirty`, `Anonymous`, `KSM`,
//!    `LazyFree`, `AnonHugePages`, `Swap`, `SwapPss`, the hugetlb ones), the ones the proof
//!    leans on are present at all, and no counter this code does not know is non-zero (a
//!    future kernel's new kind of page is not assumed harmless).
//! 2. `/proc/self/pagemap`, per page of such a mapping: either nothing is mapped there (the
//!    next touch reads the file anyway) or a present page of a file (`PM_FILE`: not anonymous),
//!    and never a swap entry (`PM_SWAP`). This also catches what smaps counts nowhere: the
//!    marker a failed swap-in leaves for a private copy that was lost (a page that must stay a
//!    fault, never become the unrelocated file page), or a guard marker.
//!
//! Between the reads and the `madvise` the process keeps running, so why can a page proven
//! clean not have changed by then? A page of the file in a mapping without write permission
//! becomes a private copy only by a write, and nothing in this process writes there: the only
//! `mprotect` of the program's mappings is the loader's, before `main`. A clean page is never
//! swapped out (reclaim just unmaps it; the next touch reads the file), so it cannot turn into
//! a swap entry either; only a private copy can, and none was there. What remains is another
//! process writing into ours through ptrace or `/proc/<pid>/mem` (a debugger setting a
//! breakpoint, a uprobe) in that window of microseconds: the page would go back to the
//! program's own code from the file, so that breakpoint is lost, and nothing crashes.
//!
//! A dirty page is not dropped either, even one that is only the page cache of a binary written
//! moments ago and not yet written back (`cargo install`, then start it at once): as the
//! contract says, no dirty page. That case is worth one later look, once the kernel has
//! written the file back (see `WRITEBACK_WAIT`), from a thread that then ends.
//!
//! Anything unexpected (no smaps, no pagemap, a short read, an odd line) drops nothing.

/// How long after start-up a second, last try waits when the first found the program file's
/// pages dirty in the page cache (a binary written moments before it was started, by `cargo
/// install` or a package manager, before the kernel wrote it back): past the kernel's default
/// 30 s expiry of dirty pages and its 5 s write-back period.
#[cfg(target_os = "linux")]
const WRITEBACK_WAIT: std::time::Duration = std::time::Duration::from_secs(40);

/// Releases the pages of the running program's own file mappings that are provably the file's.
/// When a mapping was turned down only because its pages are dirty in the page cache, one more
/// try is made from a short-lived thread once the kernel has had time to write them back.
pub fn release_startup_pages() {
    #[cfg(target_os = "linux")]
    if linux::release() == linux::Verdict::Dirty {
        let _ = std::thread::Builder::new()
            .name("trim".into())
            .stack_size(64 * 1024)
            .spawn(|| {
                std::thread::sleep(WRITEBACK_WAIT);
                linux::release();
            });
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use std::os::unix::fs::FileExt;

    /// `/proc/<pid>/pagemap` entry bits (Documentation/admin-guide/mm/pagemap.rst).
    const PM_PRESENT: u64 = 1 << 63;
    const PM_SWAP: u64 = 1 << 62;
    const PM_FILE: u64 = 1 << 61;

    /// Counters of dirty pages: a private copy, or a page of the page cache written and not yet
    /// written back. Each must be zero.
    const DIRTY: &[&str] = &["Shared_Dirty", "Private_Dirty", "Pss_Dirty"];
    /// Counters that show a private copy (or a page that is not the file's) in a mapping: each
    /// must be zero.
    const MUST_BE_ZERO: &[&str] = &[
        "Pss_Anon",
        "Pss_Shmem",
        "Anonymous",
        "KSM",
        "LazyFree",
        "AnonHugePages",
        "ShmemPmdMapped",
        "Shared_Hugetlb",
        "Private_Hugetlb",
        "Swap",
        "SwapPss",
    ];
    /// Counters the proof leans on: a mapping whose block lacks one proves nothing.
    const REQUIRED: &[&str] = &["Private_Dirty", "Anonymous", "Swap"];
    /// Lines that say nothing about whether a page is the file's.
    const HARMLESS: &[&str] = &[
        "Size",
        "KernelPageSize",
        "MMUPageSize",
        "Rss",
        "Pss",
        "Pss_File",
        "Shared_Clean",
        "Private_Clean",
        "Referenced",
        "FilePmdMapped",
        "Locked",
        "THPeligible",
        "ProtectionKey",
        "VmFlags",
    ];

    /// What smaps shows of a mapping.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Verdict {
        /// No page in it is anything but the file's own, as far as smaps can tell.
        Clean,
        /// Clean but for dirty pages (and nothing else that shows a private copy): most likely
        /// the page cache of a file written moments ago, clean once written back.
        Dirty,
        /// Writable, a private copy, a swapped-out page, or something smaps does not let us read.
        Refused,
    }

    /// Drops what can be proven, and says whether some mapping was turned down only for dirty
    /// pages (`Verdict::Dirty`), which a later try may find written back.
    pub fn release() -> Verdict {
        let Ok(exe) = std::fs::read_link("/proc/self/exe") else {
            return Verdict::Refused;
        };
        let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
            return Verdict::Refused;
        };
        let exe = exe.to_string_lossy().into_owned();
        let ours: Vec<(usize, usize, Verdict)> = mappings(&smaps)
            .into_iter()
            .filter(|m| m.path == exe)
            .map(|m| (m.start, m.end, verdict(&m)))
            .collect();
        let later = match ours.iter().any(|m| m.2 == Verdict::Dirty) {
            true => Verdict::Dirty,
            false => Verdict::Refused,
        };
        let candidates: Vec<(usize, usize)> = ours
            .iter()
            .filter(|m| m.2 == Verdict::Clean)
            .map(|m| (m.0, m.1))
            .collect();
        if candidates.is_empty() {
            return later;
        }
        let Ok(pagemap) = std::fs::File::open("/proc/self/pagemap") else {
            return Verdict::Refused;
        };
        // SAFETY: sysconf has no preconditions.
        let page = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
            p if p > 0 => p as usize,
            _ => return Verdict::Refused,
        };
        for (start, end) in candidates {
            let Some(entries) = pagemap_entries(&pagemap, start, end, page) else {
                continue;
            };
            if entries.iter().all(|&e| page_is_the_files(e)) {
                // SAFETY: [start, end) is a whole mapping of our own program file that holds
                // no private copy (proven above; see the module comment for why that still
                // holds now); MADV_DONTNEED on it only drops page-table entries, which the
                // kernel refills from the file on the next access.
                unsafe {
                    libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
                }
            }
        }
        later
    }

    /// The pagemap entries of [start, end), one per page; `None` on any failure.
    fn pagemap_entries(
        pagemap: &std::fs::File,
        start: usize,
        end: usize,
        page: usize,
    ) -> Option<Vec<u64>> {
        if !start.is_multiple_of(page) || !end.is_multiple_of(page) || end <= start {
            return None;
        }
        let pages = (end - start) / page;
        let mut bytes = vec![0u8; pages.checked_mul(8)?];
        let offset = u64::try_from(start / page).ok()?.checked_mul(8)?;
        pagemap.read_exact_at(&mut bytes, offset).ok()?;
        Some(
            bytes
                .chunks_exact(8)
                .map(|c| u64::from_ne_bytes(c.try_into().expect("8 bytes")))
                .collect(),
        )
    }

    /// One page: nothing mapped and no swap entry (the next touch reads the file), or a present
    /// page of the file itself. A present page that is not a file page (a private copy, the
    /// zero page), or any swap entry (a swapped-out copy, a migration, a poison or guard
    /// marker), is not.
    pub(super) fn page_is_the_files(entry: u64) -> bool {
        if entry & PM_SWAP != 0 {
            return false;
        }
        entry & PM_PRESENT == 0 || entry & PM_FILE != 0
    }

    /// One mapping of smaps: its range, permissions, pathname and counters (kB, or the number
    /// a line holds; `None` for a line that holds none, such as `VmFlags:`).
    #[derive(Debug)]
    pub(super) struct Mapping {
        pub start: usize,
        pub end: usize,
        pub perms: String,
        pub path: String,
        pub fields: Vec<(String, Option<u64>)>,
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

    pub(super) fn mappings(smaps: &str) -> Vec<Mapping> {
        let mut out: Vec<Mapping> = Vec::new();
        for line in smaps.lines() {
            let mut words = line.split_whitespace();
            let first = words.next().unwrap_or("");
            if let Some((a, b)) = first.split_once('-')
                && let (Ok(start), Ok(end)) =
                    (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
            {
                out.push(Mapping {
                    start,
                    end,
                    perms: words.next().unwrap_or("").to_owned(),
                    path: pathname(line).to_owned(),
                    fields: Vec::new(),
                });
                continue;
            }
            if let (Some(m), Some(name)) = (out.last_mut(), first.strip_suffix(':')) {
                let value = words.next().and_then(|v| v.parse::<u64>().ok());
                m.fields.push((name.to_owned(), value));
            }
        }
        out
    }

    /// The smaps half of the proof (see the module comment): not writable, every counter that
    /// shows a private copy present where required and zero, and nothing unknown non-zero;
    /// `Dirty` when only the dirty counters stand in the way.
    pub(super) fn verdict(m: &Mapping) -> Verdict {
        if m.perms.contains('w') {
            return Verdict::Refused;
        }
        let has = |name: &str| m.fields.iter().any(|(n, v)| n == name && v.is_some());
        if !REQUIRED.iter().all(|r| has(r)) {
            return Verdict::Refused;
        }
        let mut dirty = false;
        for (name, value) in &m.fields {
            let name = name.as_str();
            let fine = if DIRTY.contains(&name) {
                dirty |= *value != Some(0);
                value.is_some()
            } else if MUST_BE_ZERO.contains(&name) {
                *value == Some(0)
            } else {
                HARMLESS.contains(&name) || value.is_none_or(|v| v == 0)
            };
            if !fine {
                return Verdict::Refused;
            }
        }
        if dirty {
            Verdict::Dirty
        } else {
            Verdict::Clean
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::linux::{Mapping, Verdict, mappings, page_is_the_files, verdict};

    /// Whether smaps shows the mapping clean (the first half of the proof).
    fn clean_by_smaps(m: &Mapping) -> bool {
        verdict(m) == Verdict::Clean
    }

    /// A mapping's smaps block as this kernel prints it, with some counters set.
    fn block(header: &str, set: &[(&str, u64)]) -> String {
        let mut text = format!("{header}\n");
        for name in [
            "Size",
            "KernelPageSize",
            "MMUPageSize",
            "Rss",
            "Pss",
            "Pss_Dirty",
            "Shared_Clean",
            "Shared_Dirty",
            "Private_Clean",
            "Private_Dirty",
            "Referenced",
            "Anonymous",
            "KSM",
            "LazyFree",
            "AnonHugePages",
            "ShmemPmdMapped",
            "FilePmdMapped",
            "Shared_Hugetlb",
            "Private_Hugetlb",
            "Swap",
            "SwapPss",
            "Locked",
        ] {
            let kb = set.iter().find(|(n, _)| *n == name).map_or(0, |(_, v)| *v);
            text.push_str(&format!("{:<16}{kb:>8} kB\n", format!("{name}:")));
        }
        text.push_str("THPeligible:           0\nVmFlags: rd ex mr mw me \n");
        text
    }

    fn clean_text(text: &str) -> bool {
        let ms = mappings(text);
        assert_eq!(ms.len(), 1, "{text}");
        clean_by_smaps(&ms[0])
    }

    #[test]
    fn smaps_decides_by_table() {
        let ro = "5600-5700 r--p 00000000 fe:00 1 /bin/tokend";
        let rx = "5700-5900 r-xp 00100000 fe:00 1 /bin/tokend";
        type Case<'a> = (&'a str, &'a [(&'a str, u64)], bool, &'a str);
        let cases: &[Case] = &[
            (
                ro,
                &[("Rss", 128), ("Private_Clean", 128)],
                true,
                "clean, resident",
            ),
            (
                rx,
                &[("Rss", 900), ("Shared_Clean", 900)],
                true,
                "clean code",
            ),
            (rx, &[], true, "nothing resident"),
            (
                ro,
                &[("Swap", 4)],
                false,
                "a swapped-out copy (not resident)",
            ),
            (ro, &[("SwapPss", 4)], false, "swap, as PSS only"),
            (ro, &[("Rss", 4), ("Private_Dirty", 4)], false, "dirty"),
            (
                ro,
                &[("Rss", 4), ("Private_Clean", 4), ("Anonymous", 4)],
                false,
                "a private copy read back from swap: clean, but anonymous",
            ),
            (ro, &[("Pss_Dirty", 4)], false, "dirty, as PSS"),
            (ro, &[("Shared_Dirty", 4)], false, "shared dirty"),
            (ro, &[("LazyFree", 4)], false, "lazily freed anonymous"),
            (ro, &[("KSM", 4)], false, "merged anonymous"),
            (ro, &[("AnonHugePages", 2048)], false, "anonymous huge page"),
            (ro, &[("ShmemPmdMapped", 2048)], false, "shmem huge page"),
            (ro, &[("Private_Hugetlb", 2048)], false, "hugetlb"),
            (
                ro,
                &[("Locked", 4), ("Referenced", 4), ("FilePmdMapped", 2048)],
                true,
                "counters that say nothing about a copy",
            ),
        ];
        for (header, set, want, why) in cases {
            assert_eq!(clean_text(&block(header, set)), *want, "{why}");
        }
        // Writable: never, however clean.
        assert!(!clean_text(&block(
            "5a00-5b00 rw-p 00400000 fe:00 1 /bin/tokend",
            &[]
        )));
    }

    /// Dirty but otherwise clean: not dropped now, but worth one more look once written back
    /// (a binary started moments after it was written). Dirty with anything else: never.
    #[test]
    fn dirty_pages_alone_are_worth_a_later_look() {
        let ro = "5600-5700 r--p 00000000 fe:00 1 /bin/tokend";
        let cases: &[(&[(&str, u64)], Verdict)] = &[
            (&[], Verdict::Clean),
            (
                &[("Private_Dirty", 532), ("Pss_Dirty", 532)],
                Verdict::Dirty,
            ),
            (&[("Shared_Dirty", 4)], Verdict::Dirty),
            (&[("Private_Dirty", 4), ("Anonymous", 4)], Verdict::Refused),
            (&[("Private_Dirty", 4), ("Swap", 4)], Verdict::Refused),
        ];
        for (set, want) in cases {
            let ms = mappings(&block(ro, set));
            assert_eq!(verdict(&ms[0]), *want, "{set:?}");
        }
        let rw = mappings(&block(
            "5a00-5b00 rw-p 0 fe:00 1 /bin/tokend",
            &[("Private_Dirty", 4)],
        ));
        assert_eq!(verdict(&rw[0]), Verdict::Refused);
    }

    #[test]
    fn smaps_refuses_what_it_cannot_read() {
        let clean = block("5600-5700 r--p 00000000 fe:00 1 /bin/tokend", &[]);
        // An older or odd kernel without the counters the proof needs.
        for missing in ["Swap:", "Anonymous:", "Private_Dirty:"] {
            let text: String = clean
                .lines()
                .filter(|l| !l.starts_with(missing))
                .map(|l| format!("{l}\n"))
                .collect();
            assert!(!clean_text(&text), "without {missing}");
        }
        // A counter this code does not know, non-zero: not assumed harmless.
        assert!(!clean_text(&format!("{clean}Dirty_Ghosts:     4 kB\n")));
        assert!(clean_text(&format!("{clean}Dirty_Ghosts:     0 kB\n")));
        // A known counter whose value does not parse proves nothing.
        let unreadable: String = clean
            .lines()
            .map(|l| match l.starts_with("Swap:") {
                true => "Swap: ? kB\n".to_owned(),
                false => format!("{l}\n"),
            })
            .collect();
        assert!(!clean_text(&unreadable));
    }

    #[test]
    fn smaps_headers_and_paths() {
        let text = format!(
            "{}{}{}",
            block("5600-5700 r--p 00000000 fe:00 1 /bin/tokend", &[]),
            block("7f00-7f10 r-xp 00000000 fe:00 2 /usr/lib/libc.so.6", &[]),
            block(
                "8000-8100 r-xp 00000000 fe:00 3                   /opt/my tools/tokend (deleted)",
                &[("Swap", 8)]
            ),
        );
        let ms = mappings(&text);
        let got: Vec<(usize, usize, &str, bool)> = ms
            .iter()
            .map(|m| (m.start, m.end, m.path.as_str(), clean_by_smaps(m)))
            .collect();
        assert_eq!(
            got,
            [
                (0x5600, 0x5700, "/bin/tokend", true),
                (0x7f00, 0x7f10, "/usr/lib/libc.so.6", true),
                (0x8000, 0x8100, "/opt/my tools/tokend (deleted)", false),
            ]
        );
    }

    #[test]
    fn pagemap_decides_by_table() {
        const PRESENT: u64 = 1 << 63;
        const SWAP: u64 = 1 << 62;
        const FILE: u64 = 1 << 61;
        const EXCLUSIVE: u64 = 1 << 56;
        const SOFT_DIRTY: u64 = 1 << 55;
        let cases = [
            (0, true, "nothing mapped: the next touch reads the file"),
            (SOFT_DIRTY, true, "nothing mapped, soft-dirty bit only"),
            (PRESENT | FILE | 0x1234, true, "the file's own page"),
            (
                PRESENT | FILE | EXCLUSIVE | SOFT_DIRTY,
                true,
                "mapped only here",
            ),
            (PRESENT, false, "a present private copy"),
            (PRESENT | EXCLUSIVE, false, "an anonymous page"),
            (SWAP | 0x42, false, "a swapped-out copy"),
            (SWAP, false, "a swap-type marker: a lost copy, a guard page"),
            (SWAP | FILE, false, "a migration entry"),
            (PRESENT | SWAP | FILE, false, "contradictory: refused"),
        ];
        for (entry, want, why) in cases {
            assert_eq!(page_is_the_files(entry), want, "{why} ({entry:#x})");
        }
    }

    /// The real thing: this test binary's own mappings go through both halves without a crash,
    /// and the relocated RELRO mapping (read-only, yet private copies) is never found clean.
    #[test]
    fn the_running_program_is_read_without_harm() {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let exe = exe.to_string_lossy();
        let ours: Vec<_> = mappings(&smaps)
            .into_iter()
            .filter(|m| m.path == exe)
            .collect();
        assert!(!ours.is_empty(), "the program's own mappings are listed");
        for m in &ours {
            let anon = m
                .fields
                .iter()
                .any(|(n, v)| n == "Anonymous" && v.is_some_and(|v| v > 0));
            if anon {
                assert!(!clean_by_smaps(m), "{m:?}");
            }
        }
        super::release_startup_pages();
    }
}
