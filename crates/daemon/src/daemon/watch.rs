//! Watching the store for outside changes: the credentials file, or for a Keychain login the
//! keychain file that holds the item (it changes on every write; `security` is never polled).
//! The *directory* is watched, not the file:
//! writers replace the file by rename (editors, Claude Code, this program), which a watch on the
//! old inode would never see, and they also rewrite it in place, which the directory watch sees
//! as a modification of the name. Events are filtered by name and forwarded as bare "look
//! again" pings; the loop coalesces them and re-reads, so no event's details are trusted.
//!
//! When the directory does not exist yet (not logged in), the nearest existing ancestor is
//! watched instead, and any event there means "try to arm the real watch again".

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokend_core::store::Store;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

/// What the watcher tells the loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ping {
    /// Something happened to the name of a file of the login with this index: re-read it.
    Changed(usize),
    /// Something happened in a stand-in ancestor directory: try to arm the real watch.
    Rearm,
}

/// An armed watch. Dropping it stops the watcher thread.
pub struct Watch {
    _watcher: RecommendedWatcher,
    /// Identity (device, inode) of each directory watched, so a directory that was deleted and
    /// made again (the watch went with the old inode) is noticed and re-armed.
    dirs: Vec<(PathBuf, Option<(u64, u64)>)>,
    /// True when every wanted directory exists and is watched itself.
    pub complete: bool,
}

fn identity(dir: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(dir).ok().map(|m| (m.dev(), m.ino()))
}

/// The files whose changes mean "read the store again", and whether that list is only a guess:
/// the credentials file (as given and, for a symlink, as resolved), or the keychain file that
/// holds the Keychain item. While the item does not exist `security` cannot name its keychain,
/// so the login keychain is assumed (where Claude Code creates the item) and the watch is armed
/// again after the next change.
pub fn watched_files(store: &Store) -> (Vec<PathBuf>, bool) {
    match store.watched_files() {
        Some(files) => (files, false),
        None => {
            let home = std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_default();
            let mut files = vec![home.join("Library/Keychains/login.keychain-db")];
            // `--store auto` waiting for either store watches the file's name too.
            if store.may_become_file() {
                files.push(store.path().to_path_buf());
            }
            (files, true)
        }
    }
}

/// The directories to watch, and the files to look for with the login each belongs to.
fn wanted(files: &[Vec<PathBuf>]) -> (Vec<PathBuf>, Vec<(PathBuf, usize)>) {
    let mut dirs = Vec::new();
    let mut wanted = Vec::new();
    for (login, file) in files
        .iter()
        .enumerate()
        .flat_map(|(i, fs)| fs.iter().map(move |p| (i, p)))
    {
        let dir = file
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        if !dirs.contains(&dir) {
            dirs.push(dir);
        }
        if !wanted.contains(&(file.clone(), login)) {
            wanted.push((file.clone(), login));
        }
    }
    (dirs, wanted)
}

impl Watch {
    /// Arms one watch over every login's `files` (see [`watched_files`]; `files[i]` are login
    /// `i`'s) and returns it with the channel its pings arrive on.
    pub fn arm(files: &[Vec<PathBuf>]) -> notify::Result<(Watch, UnboundedReceiver<Ping>)> {
        let (tx, rx) = unbounded_channel();
        let (dirs, files) = wanted(files);
        let handler = Handler {
            tx,
            files,
            stand_ins: Vec::new(),
        };
        let mut stand_ins = Vec::new();
        let mut watched = Vec::new();
        let mut complete = true;
        for dir in &dirs {
            let mut at = dir.as_path();
            // Walk up to the nearest directory that exists.
            while !at.is_dir() {
                complete = false;
                match at.parent() {
                    Some(p) if !p.as_os_str().is_empty() => at = p,
                    _ => break,
                }
            }
            if at != dir.as_path() {
                stand_ins.push(at.to_path_buf());
            }
            watched.push(at.to_path_buf());
        }
        let handler = Handler {
            stand_ins: stand_ins.clone(),
            ..handler
        };
        let mut watcher = notify::recommended_watcher(move |res| handler.handle(res))?;
        let mut dirs_seen = Vec::new();
        for dir in watched {
            if dirs_seen.iter().any(|(d, _)| d == &dir) {
                continue;
            }
            watcher.watch(&dir, RecursiveMode::NonRecursive)?;
            let id = identity(&dir);
            dirs_seen.push((dir, id));
        }
        Ok((
            Watch {
                _watcher: watcher,
                dirs: dirs_seen,
                complete,
            },
            rx,
        ))
    }

    /// False when a watched directory was removed or replaced since the watch was armed.
    pub fn still_valid(&self) -> bool {
        self.dirs.iter().all(|(d, id)| identity(d) == *id)
    }

    pub fn dirs(&self) -> impl Iterator<Item = &Path> {
        self.dirs.iter().map(|(d, _)| d.as_path())
    }
}

struct Handler {
    tx: UnboundedSender<Ping>,
    /// Each watched file (directory and name) with the login it belongs to.
    files: Vec<(PathBuf, usize)>,
    stand_ins: Vec<PathBuf>,
}

impl Handler {
    fn handle(&self, res: notify::Result<notify::Event>) {
        let Ok(event) = res else {
            // An overflowed or failed watch: the safe reaction is for every login to look again.
            for login in self.logins() {
                let _ = self.tx.send(Ping::Changed(login));
            }
            return;
        };
        // Opening and reading the file (this program does, on every re-read) is not a change;
        // reacting to it would loop.
        if matches!(event.kind, EventKind::Access(_)) {
            return;
        }
        let mut pinged = Vec::new();
        for (file, login) in &self.files {
            if !pinged.contains(login) && event.paths.iter().any(|p| p == file) {
                pinged.push(*login);
                let _ = self.tx.send(Ping::Changed(*login));
            }
        }
        if pinged.is_empty()
            && !self.stand_ins.is_empty()
            && event
                .paths
                .iter()
                .any(|p| self.stand_ins.iter().any(|s| p.parent() == Some(s)))
        {
            let _ = self.tx.send(Ping::Rearm);
        }
    }

    fn logins(&self) -> Vec<usize> {
        let mut out: Vec<usize> = self.files.iter().map(|(_, l)| *l).collect();
        out.dedup();
        out
    }
}
