//! Claude Code's own lock directories, taken the way Claude Code takes them, so a refresh by
//! this program and one by a Claude Code session never overlap.
//!
//! Claude Code (observed in 2.1.332) locks with `mkdir`: a directory that exists is a held lock.
//! Before a refresh it takes `<config dir>/.oauth_refresh.lock`, then `<config dir>.lock`; the
//! holder refreshes their mtimes every 5 s, and one untouched for more than 60 s is stale and
//! may be taken over. Its writes of the file take `<config dir>/.storage-write.lock` (stale after
//! 15 s). This module owns those rules; `refresh` decides when to hold what.
//!
//! A lock directory is removed only by its owner: ours are remembered by inode and birth time, and a directory
//! that is no longer the one we made (someone took it over while we were frozen) is left alone.
//! One we made but could not remove (its parent turned read-only while we held it) is still
//! ours: the next take of that path by this process removes it first, instead of waiting a
//! minute for its own lock to go stale.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use crate::schedule::random_unit;

/// How often a held refresh lock's mtime is refreshed (Claude Code's interval).
pub const HEARTBEAT: Duration = Duration::from_secs(5);
/// A refresh lock untouched for longer than this is abandoned.
pub const REFRESH_STALE: Duration = Duration::from_secs(60);
/// The storage-write lock is abandoned after this long.
pub const WRITE_STALE: Duration = Duration::from_secs(15);

/// The three lock directories of one config directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockPaths {
    pub oauth_refresh: PathBuf,
    pub config: PathBuf,
    pub storage_write: PathBuf,
}

/// The lock directories for a credentials path *as given* (before symlinks are resolved):
/// Claude Code derives them from its config directory, which is the file's directory made
/// absolute lexically. `store::locate` already returns such a path; a relative one is made
/// absolute here too, so `.credentials.json` can never lock `..lock`.
/// Logs, once per wait, that a Claude Code lock is held.
pub(crate) fn announce_wait(path: &Path, age: Duration) {
    tracing::info!(
        "waiting for {} (another refresher holds it; last touched {}s ago)",
        path.display(),
        age.as_secs()
    );
}

pub fn lock_paths(credentials_path: &Path) -> LockPaths {
    let absolute = crate::store::absolute_lexically(credentials_path);
    let dir = absolute
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("/"));
    let mut config = dir.as_os_str().to_os_string();
    // `~/.claude` → `~/.claude.lock`. A trailing slash or `.` would make this a child, not a
    // sibling; a lexically absolute path has neither.
    config.push(".lock");
    LockPaths {
        oauth_refresh: dir.join(".oauth_refresh.lock"),
        config: PathBuf::from(config),
        storage_write: dir.join(".storage-write.lock"),
    }
}

/// One lock directory we created. Dropping it removes it, if it is still ours.
#[derive(Debug)]
pub struct DirLock {
    path: PathBuf,
    identity: Option<Identity>,
}

/// Device, inode and birth time: an inode number alone is often reused at once by a
/// directory made right after ours was removed.
type Identity = (u64, u64, Option<SystemTime>);

fn identity(path: &Path) -> Option<Identity> {
    fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino(), m.created().ok()))
}

/// How an attempt to take a lock directory went.
#[derive(Debug)]
pub enum Attempt {
    Taken(DirLock),
    /// Someone holds it; their lock was last touched this long ago.
    Held {
        age: Duration,
    },
}

impl DirLock {
    /// One try: `mkdir`; if it exists and is older than `stale`, take it over (rmdir, mkdir).
    /// A parent directory that cannot be written (a read-only home, a config directory at the
    /// filesystem root) is an error the caller may choose to ignore.
    pub fn try_take(path: &Path, stale: Duration) -> io::Result<Attempt> {
        remove_unremoved(path);
        match fs::create_dir(path) {
            Ok(()) => return Ok(Attempt::Taken(DirLock::ours(path))),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        let age = match fs::symlink_metadata(path).and_then(|m| m.modified()) {
            Ok(mtime) => SystemTime::now().duration_since(mtime).unwrap_or_default(),
            // It vanished between mkdir and stat: the holder just released it.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Self::try_take_fresh(path),
            Err(e) => return Err(e),
        };
        if age <= stale {
            return Ok(Attempt::Held { age });
        }
        tracing::warn!(
            "taking over {}: untouched for {}s, its holder is gone",
            path.display(),
            age.as_secs()
        );
        match fs::remove_dir(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        Self::try_take_fresh(path)
    }

    fn try_take_fresh(path: &Path) -> io::Result<Attempt> {
        match fs::create_dir(path) {
            Ok(()) => Ok(Attempt::Taken(DirLock::ours(path))),
            // Another taker was quicker: it is live now.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(Attempt::Held {
                age: Duration::ZERO,
            }),
            Err(e) => Err(e),
        }
    }

    fn ours(path: &Path) -> DirLock {
        DirLock {
            path: path.to_path_buf(),
            identity: identity(path),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Refreshes the mtime so other holders see the lock is alive.
    pub fn touch(&self) {
        let now = SystemTime::now();
        let result = fs::File::open(&self.path)
            .and_then(|d| d.set_times(fs::FileTimes::new().set_modified(now).set_accessed(now)));
        if let Err(e) = result {
            tracing::debug!("cannot refresh {}: {e}", self.path.display());
        }
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        if let Some(id) = self.identity
            && identity(&self.path) == Some(id)
            && fs::remove_dir(&self.path).is_err()
        {
            UNREMOVED
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((self.path.clone(), id));
        }
    }
}

/// Lock directories this process made and could not remove, with their identity.
static UNREMOVED: Mutex<Vec<(PathBuf, Identity)>> = Mutex::new(Vec::new());

/// Removes what this process left at `path` (see [`UNREMOVED`]) when it is still the very
/// directory we made: nobody took it over, so nobody else holds it.
fn remove_unremoved(path: &Path) {
    let mut left = UNREMOVED.lock().unwrap_or_else(PoisonError::into_inner);
    left.retain(|(p, id)| p != path || (identity(p) == Some(*id) && fs::remove_dir(p).is_err()));
}

/// One line of the ledger our flock file keeps: a lock directory we hold, with its identity.
fn ledger_line(lock: &DirLock) -> Option<String> {
    let (dev, ino, born) = lock.identity?;
    let born = born
        .and_then(|b| b.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos().to_string())
        .unwrap_or_else(|| "-".into());
    Some(format!("{}\t{dev}\t{ino}\t{born}\n", lock.path.display()))
}

/// The ledger text for the lock directories held: written into our flock file while they are
/// held, so that if this process dies holding them, the next holder of the flock knows they
/// are orphans and removes them at once instead of letting them block everyone for a minute.
pub fn ledger(held: &[&DirLock]) -> String {
    held.iter().filter_map(|l| ledger_line(l)).collect()
}

/// Removes the lock directories a ledger lists that still exist with the identity recorded:
/// they were left by a claude-tokend that died holding them (the caller holds the flock, so
/// that process is gone). A directory made since by anyone else has another identity and stays.
pub fn remove_orphans(ledger: &str) {
    for line in ledger.lines() {
        let mut fields = line.split('\t');
        let (Some(path), Some(dev), Some(ino), Some(born)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let path = Path::new(path);
        let Some((now_dev, now_ino, now_born)) = identity(path) else {
            continue;
        };
        let born_now = now_born
            .and_then(|b| b.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_nanos().to_string())
            .unwrap_or_else(|| "-".into());
        if dev == now_dev.to_string() && ino == now_ino.to_string() && born == born_now {
            tracing::warn!(
                "removing {}, left by a claude-tokend that did not finish",
                path.display()
            );
            let _ = fs::remove_dir(path);
        }
    }
}

/// Why waiting for a lock directory ended without it.
#[derive(Debug)]
pub struct Busy {
    pub path: PathBuf,
}

/// Takes one lock directory, waiting (polling with jitter) while a live holder has it, until
/// `deadline` (`None`: as long as it takes). `on_wait` is called once, when a wait begins, so
/// the caller can say why it is waiting. A lock whose directory cannot be created for another
/// reason than "held" (no write permission on its parent) is skipped with a debug note:
/// Claude Code could not take it either. `keep_alive` is called every [`HEARTBEAT`] while
/// waiting: the caller heartbeats the locks it already holds, which must not look abandoned
/// to Claude Code however long this wait lasts.
pub async fn take(
    path: &Path,
    stale: Duration,
    deadline: Option<Instant>,
    on_wait: &dyn Fn(&Path, Duration),
    keep_alive: &dyn Fn(),
) -> Result<Option<DirLock>, Busy> {
    let mut announced = false;
    let mut last_beat = Instant::now();
    loop {
        if last_beat.elapsed() >= HEARTBEAT {
            keep_alive();
            last_beat = Instant::now();
        }
        match DirLock::try_take(path, stale) {
            Ok(Attempt::Taken(lock)) => return Ok(Some(lock)),
            Ok(Attempt::Held { age }) => {
                if !announced {
                    on_wait(path, age);
                    announced = true;
                }
            }
            Err(e) => {
                tracing::debug!("not taking {}: {e}", path.display());
                return Ok(None);
            }
        }
        // 100–300 ms: quick to notice a release, and two waiters do not poll in step.
        let pause = Duration::from_millis(100).mul_f64(1.0 + 2.0 * random_unit());
        if deadline.is_some_and(|d| Instant::now() + pause > d) {
            return Err(Busy {
                path: path.to_path_buf(),
            });
        }
        tokio::time::sleep(pause).await;
    }
}

/// The two refresh locks, held together for one attempt.
#[derive(Debug)]
pub struct RefreshLocks {
    // Field order is drop order: release in the reverse of the taking order.
    config: Option<DirLock>,
    oauth_refresh: Option<DirLock>,
}

impl RefreshLocks {
    /// Takes `.oauth_refresh.lock`, then `<config dir>.lock`, in Claude Code's order. `record`
    /// is called with each as soon as it is made (before waiting for the next), so a process
    /// killed while it waits has already written down what it holds.
    pub async fn take(
        paths: &LockPaths,
        deadline: Option<Instant>,
        on_wait: &dyn Fn(&Path, Duration),
        record: &dyn Fn(&DirLock),
    ) -> Result<RefreshLocks, Busy> {
        let oauth_refresh = take(
            &paths.oauth_refresh,
            REFRESH_STALE,
            deadline,
            on_wait,
            &|| {},
        )
        .await?;
        if let Some(l) = &oauth_refresh {
            record(l);
        }
        // The first lock is ours while we wait for the second: it must stay fresh, or after
        // 60 s Claude Code would take it over from under us.
        let keep_first = || {
            if let Some(l) = &oauth_refresh {
                l.touch();
            }
        };
        let config = take(&paths.config, REFRESH_STALE, deadline, on_wait, &keep_first).await?;
        if let Some(l) = &config {
            record(l);
        }
        Ok(RefreshLocks {
            config,
            oauth_refresh,
        })
    }

    pub fn touch(&self) {
        for lock in self.held() {
            lock.touch();
        }
    }

    /// The directories actually taken (one whose parent was not writable is skipped).
    pub fn held(&self) -> Vec<&DirLock> {
        [&self.oauth_refresh, &self.config]
            .into_iter()
            .flatten()
            .collect()
    }

    /// Runs `work` while keeping the locks' mtimes fresh every [`HEARTBEAT`].
    pub async fn hold_during<F: Future>(&self, work: F) -> F::Output {
        let mut beat = tokio::time::interval(HEARTBEAT);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(work);
        loop {
            tokio::select! {
                out = &mut work => return out,
                _ = beat.tick() => self.touch(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "tokend-locks-{tag}-{}-{}",
            std::process::id(),
            (random_unit() * 1e9) as u64
        ));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn age(path: &Path, secs: u64) {
        let t = SystemTime::now() - Duration::from_secs(secs);
        fs::File::open(path)
            .unwrap()
            .set_times(fs::FileTimes::new().set_modified(t))
            .unwrap();
    }

    #[test]
    fn lock_paths_follow_claude_code() {
        let p = lock_paths(Path::new("/home/u/.claude/.credentials.json"));
        assert_eq!(
            p.oauth_refresh,
            Path::new("/home/u/.claude/.oauth_refresh.lock")
        );
        assert_eq!(p.config, Path::new("/home/u/.claude.lock"));
        assert_eq!(
            p.storage_write,
            Path::new("/home/u/.claude/.storage-write.lock")
        );
        // Relative: named after the absolute config directory, never `..lock`.
        let cwd = std::env::current_dir().unwrap();
        let p = lock_paths(Path::new(".credentials.json"));
        let mut config = cwd.clone().into_os_string();
        config.push(".lock");
        assert_eq!(p.config, PathBuf::from(config));
        assert_eq!(p.oauth_refresh, cwd.join(".oauth_refresh.lock"));
        let p = lock_paths(Path::new("/home/u/x/../.claude/.credentials.json"));
        assert_eq!(p.config, Path::new("/home/u/.claude.lock"));
    }

    #[test]
    fn live_locks_are_respected_and_stale_ones_taken_over() {
        let dir = temp_dir("stale");
        let path = dir.join("x.lock");
        let mine = match DirLock::try_take(&path, REFRESH_STALE).unwrap() {
            Attempt::Taken(l) => l,
            other => panic!("expected to take a free lock, got {other:?}"),
        };
        assert!(matches!(
            DirLock::try_take(&path, REFRESH_STALE).unwrap(),
            Attempt::Held { .. }
        ));
        // Frozen for two minutes: the next taker takes it over...
        age(&path, 120);
        let theirs = match DirLock::try_take(&path, REFRESH_STALE).unwrap() {
            Attempt::Taken(l) => l,
            other => panic!("expected a takeover, got {other:?}"),
        };
        // ...and when the frozen owner wakes and lets go, it does not remove the new holder's.
        drop(mine);
        assert!(
            path.is_dir(),
            "a taken-over lock is not removed by its old owner"
        );
        drop(theirs);
        assert!(!path.exists());
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_lock_we_could_not_remove_is_still_ours_to_take_again() {
        let dir = temp_dir("unremoved");
        let path = dir.join("x.lock");
        let Attempt::Taken(lock) = DirLock::try_take(&path, REFRESH_STALE).unwrap() else {
            panic!("free lock");
        };
        // Its removal fails (here: not empty; for real: the config directory turned read-only
        // while the lock was held).
        let blocker = path.join("blocker");
        fs::write(&blocker, b"").unwrap();
        drop(lock);
        assert!(path.is_dir(), "the removal failed");
        fs::remove_file(&blocker).unwrap();
        // The next take by this process does not wait a minute for its own lock to go stale.
        let again = DirLock::try_take(&path, REFRESH_STALE).unwrap();
        assert!(
            matches!(again, Attempt::Taken(_)),
            "expected our own leftover lock to be taken, got {again:?}"
        );
        drop(again);
        assert!(!path.exists());
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn touch_moves_the_mtime_forward() {
        let dir = temp_dir("touch");
        let path = dir.join("x.lock");
        let Attempt::Taken(lock) = DirLock::try_take(&path, WRITE_STALE).unwrap() else {
            panic!("free lock");
        };
        age(&path, 30);
        lock.touch();
        let m = fs::metadata(&path).unwrap().modified().unwrap();
        assert!(SystemTime::now().duration_since(m).unwrap() < Duration::from_secs(5));
        drop(lock);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_ledger_finds_our_orphans_and_spares_others() {
        let dir = temp_dir("ledger");
        let orphan = dir.join("orphan.lock");
        let retaken = dir.join("retaken.lock");
        let Attempt::Taken(a) = DirLock::try_take(&orphan, REFRESH_STALE).unwrap() else {
            panic!("free lock");
        };
        let Attempt::Taken(b) = DirLock::try_take(&retaken, REFRESH_STALE).unwrap() else {
            panic!("free lock");
        };
        let note = ledger(&[&a, &b]);
        assert_eq!(note.lines().count(), 2);
        // The process "dies": its locks stay on disk.
        std::mem::forget(a);
        std::mem::forget(b);
        // Someone else legitimately re-made one of them since.
        fs::remove_dir(&retaken).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        fs::create_dir(&retaken).unwrap();
        remove_orphans(&note);
        assert!(!orphan.exists(), "our orphan is removed");
        assert!(
            retaken.exists(),
            "a lock made by someone else since is left alone"
        );
        remove_orphans("garbage\nmore\tgarbage\n");
        fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn take_waits_until_the_deadline_then_gives_up() {
        let dir = temp_dir("wait");
        let path = dir.join("x.lock");
        fs::create_dir(&path).unwrap();
        let waited = std::cell::Cell::new(false);
        let started = Instant::now();
        let r = take(
            &path,
            REFRESH_STALE,
            Some(Instant::now() + Duration::from_millis(400)),
            &|_, _| waited.set(true),
            &|| {},
        )
        .await;
        assert!(r.is_err(), "a live lock is not taken");
        assert!(waited.get(), "the wait was announced");
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(path.is_dir(), "a lock that is not ours is never removed");
        fs::remove_dir_all(dir).unwrap();
    }
}
