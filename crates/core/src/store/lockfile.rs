//! This program's own cross-process lock: an exclusive `flock` on a sibling lock file that is
//! never renamed or removed (nothing in this program deletes it), so every process that opens
//! it locks the same inode. The file's text is private state shared by whoever holds the lock in
//! turn, one record per line: the grant record behind the 60 s floor, the spent-token record
//! (a refresh token sent whose answer is not saved yet, and by which process), the account
//! record (the email of this program's own login while the store descends from it), the pause
//! record (after a transient failure, no request with that refresh token before a moment), and
//! the ledger of Claude Code lock directories held (crash recovery). A line this version does not
//! know is kept as it is, so a newer version's records survive an older one's writes.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use super::records::{AccountRecord, KeeperRecord, PauseRecord, RefusedRecord, SpentRecord};
use super::{FILE_MODE, Place, StoreError};
use crate::schedule::GrantRecord;

/// Takes the exclusive lock on `path` without waiting; `None` when another process holds it.
/// `place` names the store in a "missing" error (no directory, so certainly no store: creating
/// the directory is a login's job, not a lock's).
pub(super) fn try_lock(path: &Path, place: &Place) -> Result<Option<FileLock>, StoreError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(FILE_MODE)
        .open(path)
        .map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => StoreError::Missing {
                place: place.clone(),
            },
            _ => StoreError::Lock {
                path: path.to_path_buf(),
                source,
            },
        })?;
    keep_private(&file);
    match file.try_lock() {
        Ok(()) => Ok(Some(FileLock { file })),
        Err(fs::TryLockError::WouldBlock) => Ok(None),
        Err(fs::TryLockError::Error(source)) => Err(StoreError::Lock {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Takes the exclusive lock, polling until `deadline` (`None`: wait as long as it takes).
/// Polling rather than a blocking `flock` keeps the wait cancellable: a signal can end the
/// daemon while it waits, and no thread is left stuck in the kernel.
pub(super) async fn lock(
    path: &Path,
    place: &Place,
    deadline: Option<Instant>,
) -> Result<FileLock, StoreError> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(lock) = try_lock(path, place)? {
            return Ok(lock);
        }
        if deadline.is_some_and(|d| Instant::now() + pause > d) {
            return Err(StoreError::LockTimeout {
                path: path.to_path_buf(),
                waited: started.elapsed(),
            });
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// Gives the lock file the mode the contract promises (0600) when it has another: the umask can
/// only take bits away at creation (0400 would lock every later writer out), and a file made
/// by hand may have more.
fn keep_private(file: &File) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = file.metadata()
        && meta.permissions().mode() & 0o777 != FILE_MODE
    {
        let _ = file.set_permissions(fs::Permissions::from_mode(FILE_MODE));
    }
}

/// The lock file's text without taking the lock (and without creating the file): for `status`,
/// which must stay as cheap as a read. A writer may be half-way through; every record is
/// checked as it is read, so the worst case is a record missed.
pub(super) fn peek(path: &Path) -> Records {
    use std::io::Read;
    let mut text = String::new();
    // Opened without blocking and read only when a regular file: a FIFO put there must not
    // hang `status` or `doctor`.
    let opened = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path);
    if let Ok(f) = opened
        && f.metadata().is_ok_and(|m| m.is_file())
    {
        let _ = f.take(64 * 1024).read_to_string(&mut text);
    }
    Records::parse(&text)
}

/// Held while the exclusive lock is held; dropping it closes the file, which releases the lock.
#[derive(Debug)]
pub struct FileLock {
    file: File,
}

impl FileLock {
    /// The lock file's text. Whoever holds the lock may read it: the previous holder is gone.
    fn read_raw(&self) -> String {
        use std::io::{Read, Seek};
        let mut text = String::new();
        let mut f = &self.file;
        let _ = f.seek(io::SeekFrom::Start(0));
        let _ = f.take(64 * 1024).read_to_string(&mut text);
        text
    }

    /// Replaces the text. Not synced: it only has to outlive the process, not the machine (a
    /// reboot ends every holder anyway, and a lost grant record only means a lead-based
    /// schedule until the next refresh).
    fn write_raw(&self, text: &str) {
        use std::io::{Seek, Write};
        let mut f = &self.file;
        // Write first, cut the tail after: a process killed in between leaves the new text
        // (plus, at worst, a stale tail that names directories whose identity will not match),
        // never an empty one.
        let _ = f.seek(io::SeekFrom::Start(0));
        let _ = f.write_all(text.as_bytes());
        let _ = f.set_len(text.len() as u64);
    }

    fn records(&self) -> Records {
        Records::parse(&self.read_raw())
    }

    /// Changes one part of the text; every other line stays as it was.
    fn edit(&self, change: impl FnOnce(&mut Records)) {
        let mut records = self.records();
        change(&mut records);
        self.write_raw(&records.render());
    }

    /// The ledger of Claude Code lock directories the last holder held.
    pub fn ledger(&self) -> String {
        self.records().ledger
    }

    /// Replaces the ledger; the other records stay.
    pub fn set_ledger(&self, ledger: &str) {
        self.edit(|r| r.ledger = ledger.to_owned());
    }

    /// Adds to the ledger.
    pub fn append_ledger(&self, more: &str) {
        self.edit(|r| r.ledger.push_str(more));
    }

    /// The record of the last grant this program obtained for this store.
    pub fn grant_record(&self) -> Option<GrantRecord> {
        self.records().grant
    }

    /// Replaces the grant record; the other records stay.
    pub fn set_grant_record(&self, record: &GrantRecord) {
        self.edit(|r| r.grant = Some(record.clone()));
    }

    /// The refresh token a process sent and has not saved the answer of yet, if any.
    pub fn spent_record(&self) -> Option<SpentRecord> {
        self.records().spent
    }

    /// Records (or, with `None`, clears) the refresh token being spent.
    pub fn set_spent_record(&self, record: Option<&SpentRecord>) {
        self.edit(|r| r.spent = record.cloned());
    }

    /// The account of this program's own last login, if one was recorded.
    pub fn account_record(&self) -> Option<AccountRecord> {
        self.records().account
    }

    /// Records (or, with `None`, clears) the account of this program's own login.
    pub fn set_account_record(&self, record: Option<&AccountRecord>) {
        self.edit(|r| r.account = record.cloned());
    }

    /// The refresh token the server last refused, if any.
    pub fn refused_record(&self) -> Option<RefusedRecord> {
        self.records().refused
    }

    /// Records (or, with `None`, clears) a refresh token the server refused.
    pub fn set_refused_record(&self, record: Option<&RefusedRecord>) {
        self.edit(|r| r.refused = record.cloned());
    }

    /// The pause the last transient failure asked for, if one was recorded (over or not: see
    /// [`PauseRecord::holds`]).
    pub fn pause_record(&self) -> Option<PauseRecord> {
        self.records().pause
    }

    /// Records (or, with `None`, clears) the pause after a transient failure.
    pub fn set_pause_record(&self, record: Option<&PauseRecord>) {
        self.edit(|r| r.pause = record.cloned());
    }

    /// This daemon starts keeping the login: its line replaces the lines of daemons that are
    /// gone. Returns the pids of the other live daemons already keeping it.
    pub fn add_keeper(&self) -> Vec<u32> {
        let me = KeeperRecord::this_process();
        let mut others = Vec::new();
        self.edit(|r| {
            r.keepers.retain(|k| k.pid != me.pid && k.is_live());
            others = r.keepers.iter().map(|k| k.pid).collect();
            r.keepers.push(me);
        });
        others
    }

    /// This daemon stops keeping the login (the lines of daemons that are gone go too).
    pub fn remove_keeper(&self) {
        let pid = std::process::id();
        self.edit(|r| r.keepers.retain(|k| k.pid != pid && k.is_live()));
    }
}

/// The lock file's text, read into its records. Rendered back in a fixed order, with the lines
/// no record claims (another version's) kept as they were.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Records {
    pub grant: Option<GrantRecord>,
    pub spent: Option<SpentRecord>,
    pub account: Option<AccountRecord>,
    pub refused: Option<RefusedRecord>,
    pub pause: Option<PauseRecord>,
    /// The daemons that said they keep this login (live or not: see [`KeeperRecord::is_live`]).
    pub keepers: Vec<KeeperRecord>,
    /// Lines of Claude Code lock directories held (`<path>\t<dev>\t<ino>\t<birth>`), each with
    /// its newline.
    pub ledger: String,
    /// Lines this version does not know, without their newlines.
    pub other: Vec<String>,
}

impl Records {
    pub fn parse(text: &str) -> Records {
        let mut r = Records::default();
        for line in text.lines().filter(|l| !l.is_empty()) {
            if let Some(g) = GrantRecord::from_line(line) {
                r.grant = Some(g);
            } else if let Some(s) = SpentRecord::from_line(line) {
                r.spent = Some(s);
            } else if let Some(a) = AccountRecord::from_line(line) {
                r.account = Some(a);
            } else if let Some(x) = RefusedRecord::from_line(line) {
                r.refused = Some(x);
            } else if let Some(p) = PauseRecord::from_line(line) {
                r.pause = Some(p);
            } else if let Some(k) = KeeperRecord::from_line(line) {
                r.keepers.push(k);
            } else if is_ledger_line(line) {
                r.ledger.push_str(line);
                r.ledger.push('\n');
            } else {
                r.other.push(line.to_owned());
            }
        }
        r
    }

    pub fn render(&self) -> String {
        let mut text = String::new();
        if let Some(g) = &self.grant {
            text.push_str(&g.to_line());
        }
        if let Some(s) = &self.spent {
            text.push_str(&s.to_line());
        }
        if let Some(a) = &self.account {
            text.push_str(&a.to_line());
        }
        if let Some(x) = &self.refused {
            text.push_str(&x.to_line());
        }
        if let Some(p) = &self.pause {
            text.push_str(&p.to_line());
        }
        for k in &self.keepers {
            text.push_str(&k.to_line());
        }
        for line in &self.other {
            text.push_str(line);
            text.push('\n');
        }
        text.push_str(&self.ledger);
        text
    }
}

/// A ledger line is a lock directory's path and three identity fields, tab-separated (see
/// `claude_locks::ledger`); no record line holds a tab.
fn is_ledger_line(line: &str) -> bool {
    line.split('\t').count() == 4
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::token_fingerprint;
    use crate::secret::Secret;

    #[test]
    fn records_round_trip_and_unknown_lines_are_kept() {
        let r = Records {
            grant: Some(GrantRecord {
                obtained_at: 1,
                obtained_boot: 2,
                lifetime_ms: 3,
                token: token_fingerprint(&Secret::new("a")),
            }),
            spent: Some(SpentRecord {
                token: token_fingerprint(&Secret::new("b")),
                pid: 42,
                started: Some(7),
            }),
            account: AccountRecord::new(&Secret::new("c"), "ada lovelace@example.test"),
            refused: Some(RefusedRecord::new(&Secret::new("d"), 1_765_000_000_000)),
            pause: Some(PauseRecord::after(
                &Secret::new("d"),
                None,
                "the token endpoint answered HTTP 503",
                5,
                6,
            )),
            keepers: vec![
                KeeperRecord {
                    pid: 7,
                    started: Some(8),
                },
                KeeperRecord {
                    pid: 9,
                    started: None,
                },
            ],
            ledger: "/x/.oauth_refresh.lock\t1\t2\t3\n/y.lock\t1\t2\t-\nrel.lock\t1\t2\t3\n".into(),
            other: vec![
                "future 1 2 3".into(),
                "spent nothex 1 -".into(),
                "future\twith a tab".into(),
            ],
        };
        let text = r.render();
        assert_eq!(Records::parse(&text), r, "{text}");
        assert_eq!(Records::parse(&text).render(), text);
        assert_eq!(Records::parse(""), Records::default());
        // An older version's text: a grant record and a ledger, nothing else.
        let old = "grant 1 2 3 0123456789abcdef\n/x.lock\t1\t2\t3\n";
        assert_eq!(Records::parse(old).render(), old);
    }
}
