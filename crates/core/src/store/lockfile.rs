//! This program's own cross-process lock: an exclusive `flock` on a sibling lock file that is
//! never renamed or removed, so every process that opens it locks the same inode. The file's
//! text is private state shared by whoever holds the lock in turn: the grant record behind the
//! 60 s floor, and the ledger of Claude Code lock directories held (crash recovery).

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

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

/// Held while the exclusive lock is held; dropping it closes the file, which releases the lock.
#[derive(Debug)]
pub struct FileLock {
    file: File,
}

impl FileLock {
    /// The lock file's text. Whoever holds the lock may read it: the previous holder is gone.
    /// It holds two things: the [`GrantRecord`] of the last grant this program obtained (one
    /// line), and the ledger of Claude Code lock directories held (see `claude_locks::ledger`):
    /// a ledger the last holder did not clear means it died holding them.
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

    /// Splits the text into the grant record and the ledger lines.
    fn parts(&self) -> (Option<GrantRecord>, String) {
        let mut record = None;
        let mut ledger = String::new();
        for line in self.read_raw().lines() {
            match GrantRecord::from_line(line) {
                Some(r) => record = Some(r),
                None if !line.is_empty() => {
                    ledger.push_str(line);
                    ledger.push('\n');
                }
                None => {}
            }
        }
        (record, ledger)
    }

    fn write_parts(&self, record: Option<&GrantRecord>, ledger: &str) {
        let mut text = record.map(GrantRecord::to_line).unwrap_or_default();
        text.push_str(ledger);
        self.write_raw(&text);
    }

    /// The ledger of Claude Code lock directories the last holder held.
    pub fn ledger(&self) -> String {
        self.parts().1
    }

    /// Replaces the ledger; the grant record stays.
    pub fn set_ledger(&self, ledger: &str) {
        let (record, _) = self.parts();
        self.write_parts(record.as_ref(), ledger);
    }

    /// Adds to the ledger.
    pub fn append_ledger(&self, more: &str) {
        let (record, ledger) = self.parts();
        self.write_parts(record.as_ref(), &(ledger + more));
    }

    /// The record of the last grant this program obtained for this store.
    pub fn grant_record(&self) -> Option<GrantRecord> {
        self.parts().0
    }

    /// Replaces the grant record; the ledger stays.
    pub fn set_grant_record(&self, record: &GrantRecord) {
        let (_, ledger) = self.parts();
        self.write_parts(Some(record), &ledger);
    }
}
