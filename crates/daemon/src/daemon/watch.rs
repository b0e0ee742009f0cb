//! Watching the store for outside changes: the credentials file, or for a Keychain login the
//! keychain file that holds the item (it changes on every write; `security` is never polled).
//! The *directory* is watched, not the file:
//! writers replace the file by rename (editors, Claude Code, this program), which a watch on the
//! old inode would never see, and they also rewrite it in place, which the directory watch sees
//! as a modification of the name. Events are filtered by name and forwarded as bare "look
//! again" pings; the loop coalesces them and re-reads, so no event's details are trusted.
//!
//! When the directory does not exist yet (not logged in), the nearest existing ancestor is
//! watched instead, and only an event for the next missing name on the way (`.claude` in HOME)
//! means "try to arm the real watch again": everything else there (a shell's history, the
//! daemon's own log file) is dropped here, before it can cost a read, a log line or a
//! `security` run. A queue that overflowed (the kernel dropped events) means every login looks
//! again.

use std::ffi::OsString;
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
    /// Where a stand-in waits for a missing directory: the path that, once it exists, makes a
    /// new watch worth arming.
    awaited: Vec<PathBuf>,
    /// True when every wanted directory exists and is watched itself.
    pub complete: bool,
}

fn identity(dir: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(dir).ok().map(|m| (m.dev(), m.ino()))
}

/// The files whose changes mean "read the store again", and whether that list is only a guess:
/// the credentials file (as given and, for a symlink, as resolved), or the keychain file that
/// holds the Keychain item, from `located` ([`Store::watched_files`], which for the Keychain
/// asks `security`: the caller runs that off the loop). While the item does not exist
/// `security` cannot name its keychain, so the login keychain is assumed (where Claude Code
/// creates the item) and `security` is asked again after the next change.
pub fn watched_files(store: &Store, located: Option<Vec<PathBuf>>) -> (Vec<PathBuf>, bool) {
    match located {
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
        let mut stand_ins: Vec<(PathBuf, OsString)> = Vec::new();
        let mut watched = Vec::new();
        let mut complete = true;
        for dir in &dirs {
            let mut at = dir.as_path();
            let mut next = None;
            // Walk up to the nearest directory that exists, remembering the name below it.
            while !at.is_dir() {
                complete = false;
                match (at.parent(), at.file_name()) {
                    (Some(p), Some(name)) if !p.as_os_str().is_empty() => {
                        next = Some(name.to_os_string());
                        at = p;
                    }
                    _ => break,
                }
            }
            if let Some(name) = next
                && !stand_ins.iter().any(|(d, n)| d == at && *n == name)
            {
                stand_ins.push((at.to_path_buf(), name));
            }
            watched.push(at.to_path_buf());
        }
        let handler = Handler {
            tx,
            files,
            watched: watched.clone(),
            stand_ins: stand_ins.clone(),
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
                awaited: stand_ins.into_iter().map(|(d, n)| d.join(n)).collect(),
                complete,
            },
            rx,
        ))
    }

    /// True when this watch should be armed again: a watched directory was removed or
    /// replaced since (the watch went with the old inode), or a directory a stand-in waits for
    /// exists now (its event may have come before the stand-in's watch was in place). A few
    /// `stat`s: cheap enough for the minute check.
    pub fn outdated(&self) -> bool {
        !self.still_valid() || self.awaited.iter().any(|p| p.exists())
    }

    /// False when a watched directory was removed or replaced since the watch was armed.
    fn still_valid(&self) -> bool {
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
    /// The directories watched (those of the files, or their stand-ins).
    watched: Vec<PathBuf>,
    /// Each stand-in directory with the name in it on the way to a missing directory.
    stand_ins: Vec<(PathBuf, OsString)>,
}

impl Handler {
    fn handle(&self, res: notify::Result<notify::Event>) {
        for ping in self.pings(&res) {
            let _ = self.tx.send(ping);
        }
    }

    /// What an event means to the loop: one filter, no I/O, so a flood of unrelated events
    /// costs nothing more than this.
    fn pings(&self, res: &notify::Result<notify::Event>) -> Vec<Ping> {
        let event = match res {
            // The kernel dropped events (its queue overflowed: notify reports that as an event
            // flagged `Rescan`), or the watch failed: any change may have been missed, so every
            // login looks again (and a directory a stand-in waits for may have appeared).
            Ok(event) if event.need_rescan() => return self.every_login(),
            Err(_) => return self.every_login(),
            Ok(event) => event,
        };
        // Opening and reading the file (this program does, on every re-read) is not a change;
        // reacting to it would loop.
        if matches!(event.kind, EventKind::Access(_)) {
            return Vec::new();
        }
        let mut pings = Vec::new();
        for (file, login) in &self.files {
            let ping = Ping::Changed(*login);
            // The file's name, or the watched directory that holds it (its mode changed: a save
            // that failed may work now).
            let concerned = event.paths.iter().any(|p| {
                p == file || (Some(p.as_path()) == file.parent() && self.watched.contains(p))
            });
            if concerned && !pings.contains(&ping) {
                pings.push(ping);
            }
        }
        if pings.is_empty()
            && event.paths.iter().any(|p| {
                self.stand_ins
                    .iter()
                    .any(|(dir, name)| p.parent() == Some(dir) && p.file_name() == Some(name))
            })
        {
            pings.push(Ping::Rearm);
        }
        pings
    }

    fn every_login(&self) -> Vec<Ping> {
        let mut out: Vec<Ping> = Vec::new();
        if !self.stand_ins.is_empty() {
            out.push(Ping::Rearm);
        }
        for (_, login) in &self.files {
            if !out.contains(&Ping::Changed(*login)) {
                out.push(Ping::Changed(*login));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{
        AccessKind, CreateKind, DataChange, Flag, MetadataKind, ModifyKind, RemoveKind,
    };

    fn handler() -> Handler {
        let (tx, _rx) = unbounded_channel();
        Handler {
            tx,
            files: vec![
                (PathBuf::from("/h/.claude/.credentials.json"), 0),
                (PathBuf::from("/h/Library/Keychains/login.keychain-db"), 1),
                (PathBuf::from("/h/other/.credentials.json"), 2),
            ],
            watched: vec![
                PathBuf::from("/h/.claude"),
                PathBuf::from("/h/Library/Keychains"),
                PathBuf::from("/h"),
            ],
            stand_ins: vec![(PathBuf::from("/h"), OsString::from("other"))],
        }
    }

    fn event(kind: EventKind, path: &str) -> notify::Result<notify::Event> {
        Ok(notify::Event::new(kind).add_path(PathBuf::from(path)))
    }

    #[test]
    fn a_stand_in_waits_for_the_next_missing_name_and_knows_when_it_appeared() {
        let root = std::env::temp_dir().join(format!(
            "tokend-watch-{}-{}",
            std::process::id(),
            tokend_core::schedule::random_unit().to_bits()
        ));
        std::fs::create_dir(&root).unwrap();
        let file = root.join("a/b/c/.credentials.json");
        let (watch, _rx) = Watch::arm(&[vec![file]]).unwrap();
        assert!(!watch.complete);
        assert_eq!(watch.dirs().collect::<Vec<_>>(), [root.as_path()]);
        assert_eq!(watch.awaited, [root.join("a")]);
        assert!(!watch.outdated(), "nothing appeared yet");
        std::fs::write(root.join("unrelated"), b"").unwrap();
        assert!(!watch.outdated(), "another name is not the one awaited");
        // `mkdir -p`: the whole path at once, maybe before the watch was in place.
        std::fs::create_dir_all(root.join("a/b/c")).unwrap();
        assert!(watch.outdated(), "the awaited directory exists: arm again");
        drop(watch);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn what_each_event_means() {
        let h = handler();
        let all = vec![
            Ping::Rearm,
            Ping::Changed(0),
            Ping::Changed(1),
            Ping::Changed(2),
        ];
        let write = EventKind::Modify(ModifyKind::Data(DataChange::Any));
        let attrib = EventKind::Modify(ModifyKind::Metadata(MetadataKind::Any));
        let create = EventKind::Create(CreateKind::Any);
        let cases: Vec<(&str, notify::Result<notify::Event>, Vec<Ping>)> = vec![
            (
                "the credentials file written",
                event(write, "/h/.claude/.credentials.json"),
                vec![Ping::Changed(0)],
            ),
            (
                "the keychain file written",
                event(write, "/h/Library/Keychains/login.keychain-db"),
                vec![Ping::Changed(1)],
            ),
            (
                "the config directory's mode changed",
                event(attrib, "/h/.claude"),
                vec![Ping::Changed(0)],
            ),
            (
                "another file beside the credentials",
                event(write, "/h/.claude/settings.json"),
                vec![],
            ),
            (
                "the credentials file read",
                event(
                    EventKind::Access(AccessKind::Any),
                    "/h/.claude/.credentials.json",
                ),
                vec![],
            ),
            (
                "the awaited directory made in the stand-in",
                event(create, "/h/other"),
                vec![Ping::Rearm],
            ),
            (
                "a log file written in the stand-in",
                event(write, "/h/nohup.out"),
                vec![],
            ),
            (
                "a shell's history in the stand-in",
                event(create, "/h/.bash_history"),
                vec![],
            ),
            (
                "a name deeper down that merely ends the same",
                event(create, "/h/x/other"),
                vec![],
            ),
            (
                "the awaited name removed (still worth a look)",
                event(EventKind::Remove(RemoveKind::Any), "/h/other"),
                vec![Ping::Rearm],
            ),
            (
                "an overflowed queue",
                Ok(notify::Event::new(EventKind::Other).set_flag(Flag::Rescan)),
                all.clone(),
            ),
            (
                "a failed watch",
                Err(notify::Error::generic("boom")),
                all.clone(),
            ),
        ];
        for (what, res, want) in cases {
            assert_eq!(h.pings(&res), want, "{what}");
        }
    }
}
