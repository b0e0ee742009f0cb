//! Where a login is kept, behind one seam: the credentials file or Claude Code's macOS Keychain
//! item. [`Store`] is that seam; the refresh sequence, the daemon and the commands never ask
//! which kind they hold. The kinds differ only in how bytes are read, written, removed and
//! watched (`file`, `keychain`); what they share lives here: the places messages name and the
//! errors (`error`), this program's own flock (`lockfile`), and where a login's locks are
//! (always the credentials directory Claude Code would use, as `locate` finds it).
//!
//! Nothing else in the program writes a store, and no write here ever truncates a file in
//! place except the bind-mount fallback: a new version goes to a temp file, is synced, and is
//! renamed over the old one (or handed to `security` whole, for the Keychain).

mod error;
mod file;
mod keychain;
mod locate;
mod lockfile;
pub mod process;
mod records;

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::credentials::Credentials;

pub use error::{Place, StoreError};
pub use file::{FileWrite, utc_stamp};
pub use keychain::{Keychain, MAX_INTERACTIVE_LINE, decode_hex, encode_hex, interactive_line};
use locate::same_file;
pub use locate::{
    FALLBACK_ACCOUNT, FILE_NAME, KEYCHAIN_SERVICE, LocateEnv, NoHomeError, Origin,
    absolute_lexically, keychain_account, keychain_service, locate, resolve_symlinks,
};
pub use lockfile::{FileLock, Records};
pub use records::{AccountRecord, KeeperRecord, PauseRecord, RefusedRecord, SpentRecord};

/// How many reads over about a second a document that fails to parse gets before it counts as
/// malformed (see [`Store::read_settled`]).
const SETTLE_TRIES: u32 = 5;
const SETTLE_PAUSE: Duration = Duration::from_millis(200);

/// The file mode the credentials file always has.
pub const FILE_MODE: u32 = 0o600;
/// The mode of a directory this program creates.
pub const DIR_MODE: u32 = 0o700;

/// One read of the store.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub doc: Credentials,
    /// A hash of the exact bytes, so the daemon can tell its own write from someone else's.
    pub fingerprint: u64,
    /// The permission bits the file had (a Keychain item counts as private: 0600).
    pub mode: u32,
}

/// A hash of stored bytes. Not cryptographic: it only tells "the bytes we wrote" from others.
pub fn fingerprint(bytes: &[u8]) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// Which kind of store, for messages and `status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Keychain,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::File => "file",
            Kind::Keychain => "keychain",
        }
    }
}

/// One login's store. `path` is the credentials path as located (before symlinks): for the
/// file store it is the file; for both kinds its directory is the config directory whose lock
/// directories Claude Code takes.
#[derive(Clone, Debug)]
pub struct Store {
    path: PathBuf,
    item: Option<Keychain>,
    /// `--store auto` chose the Keychain because neither store existed yet: a file that appears
    /// at `path` is Claude Code's choice and wins (see [`Store::file_appeared`]).
    file_may_appear: bool,
}

impl Store {
    /// The file store at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Store {
            path: path.into(),
            item: None,
            file_may_appear: false,
        }
    }

    /// The Keychain store: `item`, locked like the file at `path` would be.
    pub fn keychain(path: impl Into<PathBuf>, item: Keychain) -> Self {
        Store {
            path: path.into(),
            item: Some(item),
            file_may_appear: false,
        }
    }

    /// The Keychain store `--store auto` falls back to when neither store exists yet: it waits
    /// for either, and the file wins if it is the one that appears.
    pub fn keychain_or_file(path: impl Into<PathBuf>, item: Keychain) -> Self {
        Store {
            file_may_appear: true,
            ..Store::keychain(path, item)
        }
    }

    /// Whether this is a [`Store::keychain_or_file`] store.
    pub fn may_become_file(&self) -> bool {
        self.file_may_appear
    }

    /// For a store from [`Store::keychain_or_file`] whose item is still missing: the file store,
    /// once a file exists at `path`.
    pub fn file_appeared(&self) -> Option<Store> {
        (self.file_may_appear && self.path.exists()).then(|| Store::new(self.path.clone()))
    }

    pub fn kind(&self) -> Kind {
        match self.item {
            None => Kind::File,
            Some(_) => Kind::Keychain,
        }
    }

    /// Whether `other` is this very store (the same file, however it is reached: a symlinked
    /// file or directory, `..`, a relative name; or the same Keychain item): two names for one
    /// login are one login.
    pub fn same_store(&self, other: &Store) -> bool {
        match (&self.item, &other.item) {
            (None, None) => self.path == other.path || same_file(&self.target(), &other.target()),
            (Some(a), Some(b)) => a == b,
            _ => false,
        }
    }

    pub fn keychain_item(&self) -> Option<&Keychain> {
        self.item.as_ref()
    }

    /// What messages call this store.
    pub fn place(&self) -> Place {
        match &self.item {
            None => Place::File(self.path.clone()),
            Some(item) => item.place(),
        }
    }

    /// The credentials path as located (possibly a symlink; for a Keychain login, where the
    /// file would be).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file that holds the data, resolved anew on every call so a re-pointed link is
    /// followed. A Keychain login has none: its `path` is returned.
    pub fn target(&self) -> PathBuf {
        match self.item {
            None => resolve_symlinks(&self.path).unwrap_or_else(|_| self.path.clone()),
            Some(_) => self.path.clone(),
        }
    }

    /// The flock file: `<resolved target>.lock` for a file (never renamed or removed, so every
    /// process that opens it locks the same inode), `<config dir>/.credentials.json.lock` for a
    /// Keychain login.
    pub fn lock_path(&self) -> PathBuf {
        let mut name = self.target().into_os_string();
        name.push(".lock");
        PathBuf::from(name)
    }

    /// The directory of the target: the config directory, for a Keychain login.
    fn dir(&self) -> PathBuf {
        self.target()
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    }

    fn read_bytes(&self) -> Result<(Vec<u8>, u32), StoreError> {
        match &self.item {
            None => file::read(&self.path, &self.target()),
            Some(item) => item.read().map(|bytes| (bytes, FILE_MODE)),
        }
    }

    pub fn read(&self) -> Result<Snapshot, StoreError> {
        let (bytes, mode) = self.read_bytes()?;
        let doc = Credentials::parse(&bytes).map_err(|reason| StoreError::Malformed {
            place: self.place(),
            reason,
        })?;
        Ok(Snapshot {
            doc,
            fingerprint: fingerprint(&bytes),
            mode,
        })
    }

    /// [`Store::read`] for async callers: a Keychain read (a `security` run, up to its 30 s
    /// timeout, or held while the keychain asks a person) runs on the runtime's blocking pool,
    /// so the caller's event loop goes on meanwhile; a file is read inline.
    pub async fn read_async(&self) -> Result<Snapshot, StoreError> {
        match &self.item {
            None => self.read(),
            Some(_) => off_the_loop(self, Store::read).await,
        }
    }

    /// Reads the store, re-reading a few times over about a second while it looks half-written
    /// (a writer that rewrites in place, older Claude Code, may be half-way through).
    pub async fn read_settled(&self) -> Result<Snapshot, StoreError> {
        let mut tries = 1;
        loop {
            match self.read_async().await {
                Err(e) if e.may_be_mid_write() && tries < SETTLE_TRIES => {
                    tries += 1;
                    tokio::time::sleep(SETTLE_PAUSE).await;
                }
                other => return other,
            }
        }
    }

    /// Copies the store's bytes, unchanged, to `<target>.malformed-<UTC yyyymmddThhmmssZ>`
    /// (for a Keychain login `<config dir>/.credentials.json.malformed-…`), 0600 and synced,
    /// before new tokens in hand are written over a document that does not parse: nothing it
    /// held is lost. Returns the copy's path.
    pub fn copy_aside(&self) -> Result<PathBuf, StoreError> {
        let target = self.target();
        let bytes = match &self.item {
            None => std::fs::read(&target)
                .map_err(file::write_error("reading the malformed file", &target))?,
            Some(item) => {
                file::ensure_dir(&self.dir())?;
                item.read()?
            }
        };
        let copy = file::copy_aside(&target, &bytes)?;
        tracing::warn!(
            "{} did not parse; its bytes were copied unchanged to {} before the new tokens \
             were written",
            self.place(),
            copy.display()
        );
        Ok(copy)
    }

    /// [`Store::copy_aside`] for async callers (a Keychain item is read off the event loop).
    pub async fn copy_aside_async(&self) -> Result<PathBuf, StoreError> {
        match &self.item {
            None => self.copy_aside(),
            Some(_) => off_the_loop(self, Store::copy_aside).await,
        }
    }

    /// Creates the config directory (0700, and any missing parents) when it does not exist: a
    /// first login on a machine where Claude Code never ran.
    pub fn ensure_dir(&self) -> Result<(), StoreError> {
        file::ensure_dir(&self.dir())
    }

    /// Deletes the store: the file (a symlink pointing at it stays, so the next login writes
    /// through it again) or the Keychain item. Call with the lock held.
    pub fn remove(&self) -> Result<(), StoreError> {
        match &self.item {
            None => file::remove(&self.target()),
            Some(item) => item.delete(),
        }
    }

    /// [`Store::remove`] for async callers (a Keychain item is deleted off the event loop).
    pub async fn remove_async(&self) -> Result<(), StoreError> {
        match &self.item {
            None => self.remove(),
            Some(_) => off_the_loop(self, Store::remove).await,
        }
    }

    /// Takes the exclusive lock without waiting; `None` when another process holds it.
    pub fn try_lock(&self) -> Result<Option<FileLock>, StoreError> {
        if self.item.is_some() {
            // The item can exist before Claude Code ever made its directory; the lock needs it.
            self.ensure_dir()?;
        }
        lockfile::try_lock(&self.lock_path(), &self.place())
    }

    /// Takes the exclusive lock, waiting until `deadline` (`None`: as long as it takes).
    pub async fn lock(&self, deadline: Option<Instant>) -> Result<FileLock, StoreError> {
        if self.item.is_some() {
            self.ensure_dir()?;
        }
        lockfile::lock(&self.lock_path(), &self.place(), deadline).await
    }

    /// What the lock file records, read without taking the lock and without creating the file
    /// (for `status`, which must stay as cheap as a read); empty when there is none.
    pub fn peek_records(&self) -> Records {
        lockfile::peek(&self.lock_path())
    }

    /// The pids of the live claude-tokend daemons keeping this login, as their records in the
    /// lock file say (read without taking the lock or creating the file; a daemon that is gone
    /// is not one).
    pub fn keepers(&self) -> Vec<u32> {
        self.peek_records()
            .keepers
            .into_iter()
            .filter(KeeperRecord::is_live)
            .map(|k| k.pid)
            .collect()
    }

    /// Removes temp files a crashed writer left. Taking the held lock as an argument is the
    /// proof that no live writer's temp file can be among them.
    pub fn remove_stale_temps(&self, _held: &FileLock) {
        if self.item.is_none() {
            let (dir, prefix) = file::temp_location(&self.target());
            file::remove_stale_temps(&dir, &prefix);
        }
    }

    /// Checks, before a request, that `doc` with room for new tokens can be written back the
    /// way this store writes it (a Keychain item has a size limit; a file has none worth
    /// checking here: `begin_write` reserves its room). Refusing now spends nothing.
    pub fn check_room(&self, doc: &Credentials) -> Result<(), StoreError> {
        match &self.item {
            None => Ok(()),
            Some(item) => item.check_room(doc.to_compact_bytes().len()),
        }
    }

    /// Prepares the next write, *before* the request that spends a refresh token: for a file,
    /// the temp file (0600, room reserved), so that a failure here means nothing is sent.
    pub fn begin_write(&self) -> Result<PendingWrite, StoreError> {
        Ok(PendingWrite(match &self.item {
            None => Pending::File(file::begin_write(&self.target())?),
            Some(item) => Pending::Keychain(item.clone()),
        }))
    }

    /// The files whose changes mean "read the store again": the file (as given and as resolved)
    /// or, for a Keychain login, the keychain file that holds the item (`None` when `security`
    /// cannot say, e.g. the item does not exist yet).
    pub fn watched_files(&self) -> Option<Vec<PathBuf>> {
        match &self.item {
            None => Some(vec![self.path.clone(), self.target()]),
            // Waiting for either store: the file's name is watched too.
            Some(item) => item.keychain_file().map(|f| {
                let mut files = vec![f];
                if self.file_may_appear {
                    files.push(self.path.clone());
                }
                files
            }),
        }
    }

    /// [`Store::watched_files`] for async callers: asking `security` where the item lives runs
    /// off the event loop.
    pub async fn watched_files_async(&self) -> Option<Vec<PathBuf>> {
        match &self.item {
            None => self.watched_files(),
            Some(_) => off_the_loop(self, |s: &Store| Ok(s.watched_files()))
                .await
                .ok()
                .flatten(),
        }
    }
}

/// Runs `call` on a clone of `store` on the runtime's blocking pool and waits for it without
/// holding up the caller's thread. Dropping the wait does not stop the call: a `security` run
/// ends by itself (its 30 s timeout at most).
async fn off_the_loop<T: Send + 'static>(
    store: &Store,
    call: fn(&Store) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let store = store.clone();
    let place = store.place();
    tokio::task::spawn_blocking(move || call(&store))
        .await
        .unwrap_or_else(|e| Err(abandoned(place, &e)))
}

/// The error for a blocking call that never returned (it panicked, or the runtime is shutting
/// down): a failure of the Keychain that may pass.
fn abandoned(place: Place, e: &tokio::task::JoinError) -> StoreError {
    StoreError::KeychainUnavailable {
        place,
        locked: false,
        detail: format!("the `security` run was abandoned ({e})"),
    }
}

/// A write prepared before a request. Dropped without [`commit`](PendingWrite::commit), it
/// leaves nothing behind.
#[derive(Debug)]
pub struct PendingWrite(Pending);

#[derive(Debug)]
enum Pending {
    File(FileWrite),
    Keychain(Keychain),
}

impl PendingWrite {
    /// The temp file's path, for a file store (tests look for it).
    pub fn temp_path(&self) -> Option<&Path> {
        match &self.0 {
            Pending::File(w) => Some(w.temp_path()),
            Pending::Keychain(_) => None,
        }
    }

    /// Writes `doc` whole: for a file atomically (after a crash it is the old version or the
    /// new one, whole), for the Keychain as one `security` update of the compact JSON. Returns
    /// the fingerprint of the bytes written.
    pub fn commit(self, doc: &Credentials) -> Result<u64, StoreError> {
        match self.0 {
            Pending::File(w) => {
                let bytes = doc.to_bytes();
                w.commit(&bytes)?;
                Ok(fingerprint(&bytes))
            }
            Pending::Keychain(item) => {
                let bytes = doc.to_compact_bytes();
                item.write(&bytes)?;
                Ok(fingerprint(&bytes))
            }
        }
    }

    /// [`PendingWrite::commit`] for async callers: the Keychain's `security` run goes to the
    /// runtime's blocking pool (the event loop goes on meanwhile); a file is written inline.
    pub async fn commit_async(self, doc: &Credentials) -> Result<u64, StoreError> {
        let place = match &self.0 {
            Pending::File(_) => return self.commit(doc),
            Pending::Keychain(item) => item.place(),
        };
        let doc = doc.clone();
        tokio::task::spawn_blocking(move || self.commit(&doc))
            .await
            .unwrap_or_else(|e| Err(abandoned(place, &e)))
    }
}

#[cfg(test)]
mod tests;
