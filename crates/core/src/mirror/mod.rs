//! Access-only copies of a login ("mirrors", see CONTRACT.md "Access-only copies for containers
//! and other machines"): `DIR/.credentials.json` holding the source's access token and never
//! its refresh token, for a container, a dev container or another machine to run Claude Code
//! on. This module owns one mirror: bringing it up to date ([`Mirror::sync`]), what the
//! start-up checks look at, and its last write time. Which mirrors a login has, and when they
//! are synced, is the binary's business.
//!
//! A mirror directory belongs to its consumer and is treated as hostile: every operation goes
//! through `dir` (relative to an `O_NOFOLLOW` directory descriptor, never following a link,
//! never opening what is not a regular file). What a mirror holds is decided by `doc`, purely.
//! Nothing here reads or writes the source.

mod dir;
mod doc;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde_json::{Map, Value};

pub use dir::MAX_READ;
pub use doc::{CARRIED, Want, want_from};

use dir::{Current, Dir, FILE, Parent, Seen};

/// The mirror file's name inside its directory.
pub const FILE_NAME: &str = ".credentials.json";

/// A mirror file that does not parse is looked at again after this long before it is
/// replaced: its consumer may be half-way through writing it.
pub const UNPARSABLE_PAUSE: std::time::Duration = std::time::Duration::from_secs(1);

/// A store found gone is read once more this much later before its mirrors (and
/// `--mirror-cmd`'s copies) lose the login: a file moved away and back for a moment (an
/// editor's save) is not a logout.
pub const GONE_RECHECK: std::time::Duration = std::time::Duration::from_millis(500);

/// What a login's mirrors should hold, from one read of its store: `None` when the store
/// cannot say (unreadable, malformed, a Keychain that cannot be asked), so the mirrors are
/// left as they are; a store that is gone holds no login.
pub fn want_of_read(
    read: &Result<crate::store::Snapshot, crate::store::StoreError>,
) -> Option<Want> {
    match read {
        Ok(snapshot) => want_from(&snapshot.doc),
        Err(crate::store::StoreError::Missing { .. }) => Some(Want::NoLogin),
        Err(_) => None,
    }
}

/// One mirror directory: its path as fixed at start (see [`resolve`]), reached at every write
/// from its parent, which must still be the same directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mirror {
    dir: PathBuf,
}

/// What [`Mirror::sync`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Synced {
    /// The mirror already held what it should (or there was nothing to remove).
    Unchanged,
    /// Written. `replaced` says what was there that was not a mirror document (a symlink, a
    /// FIFO, an unparsable file...), replaced by a new regular file.
    Written { replaced: Option<&'static str> },
    /// The file changed between the look and the write (a consumer writing it): nothing was
    /// written; look again shortly.
    Raced,
    /// The mirror file holds a refresh token (someone signed in there): left alone.
    HoldsRefreshToken,
    /// The mirror file does not parse and `replace_unparsable` was not given: a consumer may
    /// be half-way through writing it, so look again in a second.
    Unparsable,
}

/// What a mirror holds compared with what it should ([`Mirror::compare`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Compared {
    /// What it should: the source's access-only login, or no login when the source has none.
    Holds,
    /// A mirror document with another login (an older access token) or none.
    Differs,
    /// No mirror file (or no directory) where the source has a login.
    Missing,
    /// A refresh token: someone signed in there, so it is not written.
    HoldsRefreshToken,
    /// Something that is not a mirror document (a symlink, a FIFO, an unparsable file...):
    /// the next write replaces it. The text says what.
    Foreign(&'static str),
}

/// A mirror that could not be brought up to date.
#[derive(Debug)]
pub struct MirrorError {
    pub dir: PathBuf,
    pub stage: &'static str,
    pub source: io::Error,
}

impl fmt::Display for MirrorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "mirror {}: {}: {}",
            self.dir.display(),
            self.stage,
            self.source
        )?;
        if self.source.kind() == io::ErrorKind::PermissionDenied {
            // The usual cause: a directory Docker made (as root) for a bind source that did
            // not exist yet.
            use std::os::unix::fs::MetadataExt;
            if let Ok(meta) = std::fs::symlink_metadata(&self.dir) {
                write!(
                    f,
                    " (it is owned by uid {}, and this program runs as uid {}: give it to the \
                     user this program runs as, e.g. `sudo chown $(id -u):$(id -g) {}`)",
                    meta.uid(),
                    // SAFETY: geteuid has no preconditions and cannot fail.
                    unsafe { libc::geteuid() },
                    self.dir.display()
                )?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for MirrorError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

impl Mirror {
    /// A mirror of `dir`, which the caller has made absolute (see [`resolve`]).
    pub fn new(dir: PathBuf) -> Mirror {
        Mirror { dir }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `DIR/.credentials.json`, for messages.
    pub fn file(&self) -> PathBuf {
        self.dir.join(FILE_NAME)
    }

    fn error(&self, stage: &'static str) -> impl FnOnce(io::Error) -> MirrorError + '_ {
        move |source| MirrorError {
            dir: self.dir.clone(),
            stage,
            source,
        }
    }

    /// Opens the directory, creating it (0700, owned like its parent) when it is missing and
    /// `create`. `None` when it is missing and not to be created.
    fn open_dir(&self, create: bool) -> Result<Option<Dir>, MirrorError> {
        let (Some(parent), Some(name)) = (self.dir.parent(), self.dir.file_name()) else {
            return Err(self.error("opening the directory")(io::Error::other(
                "a mirror directory needs a parent directory",
            )));
        };
        let name = std::ffi::CString::new(name.as_encoded_bytes())
            .map_err(|_| self.error("opening the directory")(io::Error::other("a NUL byte")))?;
        let parent = match Parent::open(parent) {
            Ok(p) => p,
            Err(e) if e.kind() == io::ErrorKind::NotFound && !create => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(self.error("creating the directory")(io::Error::new(
                    io::ErrorKind::NotFound,
                    "its parent directory does not exist (a missing mirror directory is \
                     created only inside an existing one)",
                )));
            }
            Err(e) => return Err(self.error("opening the directory that holds it")(e)),
        };
        match parent.open_dir(&name) {
            Ok(d) => Ok(Some(d)),
            Err(e) if e.kind() == io::ErrorKind::NotFound && !create => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => parent
                .create_dir(&name)
                .map(Some)
                .map_err(self.error("creating the directory")),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::ENOTDIR)) => {
                Err(self.error("opening the directory")(io::Error::other(
                    "it is a symlink or not a directory (--mirror takes a directory, and one is \
                     never written through a link)",
                )))
            }
            Err(e) => Err(self.error("opening the directory")(e)),
        }
    }

    /// Brings the mirror file up to date with `want`, keeping the consumer's own keys. Reads
    /// nothing in the directory but the mirror file, and that only when it is a regular file
    /// with one link of at most [`MAX_READ`] bytes; anything else there is replaced by a new
    /// regular file. A file that does not parse is replaced only with `replace_unparsable`
    /// (else [`Synced::Unparsable`]: look again in a second). A file holding a refresh token is
    /// never touched.
    pub fn sync(&self, want: &Want, replace_unparsable: bool) -> Result<Synced, MirrorError> {
        let Some(dir) = self.open_dir(*want != Want::NoLogin)? else {
            return Ok(Synced::Unchanged);
        };
        let current = dir
            .look(FILE)
            .map_err(self.error("reading the mirror file"))?;
        let seen = Seen::from(&current);
        let (base, replaced): (Option<Map<String, Value>>, _) = match current {
            Current::Absent if *want == Want::NoLogin => return Ok(Synced::Unchanged),
            Current::Absent => (None, None),
            Current::Foreign(what) => (None, Some(what)),
            Current::Bytes(bytes) => match serde_json::from_slice::<Value>(&bytes) {
                Ok(Value::Object(map)) => {
                    if doc::holds_refresh_token(&map) {
                        return Ok(Synced::HoldsRefreshToken);
                    }
                    if doc::holds(&map, want) {
                        return Ok(Synced::Unchanged);
                    }
                    (Some(map), None)
                }
                _ if !replace_unparsable => return Ok(Synced::Unparsable),
                _ => (None, Some("a file that is not a JSON object")),
            },
        };
        let next = doc::merged(base.as_ref(), want);
        match dir.replace(FILE, &doc::to_bytes(&next), &seen) {
            Ok(()) => Ok(Synced::Written { replaced }),
            Err(e) if dir::is_raced(&e) => Ok(Synced::Raced),
            Err(e) => Err(self.error("writing the mirror file")(e)),
        }
    }

    /// Whether the mirror file holds someone's real login (a refresh token), read as carefully
    /// as [`Mirror::sync`] reads it (a link is not followed, so a link to a real login is not
    /// one: it is replaced). For the start-up check.
    pub fn holds_real_login(&self) -> bool {
        let Ok(Some(dir)) = self.open_dir(false) else {
            return false;
        };
        match dir.look(FILE) {
            Ok(Current::Bytes(bytes)) => match serde_json::from_slice::<Value>(&bytes) {
                Ok(Value::Object(map)) => doc::holds_refresh_token(&map),
                _ => false,
            },
            _ => false,
        }
    }

    /// What the mirror holds now compared with `want`, looked at as carefully as
    /// [`Mirror::sync`] looks (never following a link, reading only a regular file of at most
    /// [`MAX_READ`] bytes) and changing nothing: nothing is created, written or removed. For
    /// `doctor`.
    pub fn compare(&self, want: &Want) -> Result<Compared, MirrorError> {
        let Some(dir) = self.open_dir(false)? else {
            return Ok(match want {
                Want::NoLogin => Compared::Holds,
                Want::Login(_) => Compared::Missing,
            });
        };
        let current = dir
            .look(FILE)
            .map_err(self.error("reading the mirror file"))?;
        Ok(match current {
            Current::Absent if *want == Want::NoLogin => Compared::Holds,
            Current::Absent => Compared::Missing,
            Current::Foreign(what) => Compared::Foreign(what),
            Current::Bytes(bytes) => match serde_json::from_slice::<Value>(&bytes) {
                Ok(Value::Object(map)) if doc::holds_refresh_token(&map) => {
                    Compared::HoldsRefreshToken
                }
                Ok(Value::Object(map)) if doc::holds(&map, want) => Compared::Holds,
                Ok(Value::Object(_)) => Compared::Differs,
                _ => Compared::Foreign("a file that is not a JSON object"),
            },
        })
    }

    /// The message for a mirror a consumer signed in to (a refresh token appeared in it).
    pub fn holds_refresh_token_text(&self) -> String {
        format!(
            "mirror {}: {FILE_NAME} now holds a refresh token (someone signed in there), so it \
             is left alone and not updated until that login is moved away",
            self.dir.display()
        )
    }

    /// When the mirror file was last modified (`status`), if it is a regular file.
    pub fn last_written(&self) -> Option<SystemTime> {
        let dir = self.open_dir(false).ok()??;
        dir.modified(FILE)
    }
}

/// `dir` made absolute, with the symlinks among its existing ancestors resolved when they are
/// to be trusted, and never the one at `dir` itself: the place a mirror is written in is fixed
/// at start. A link on the way is followed only when it belongs to root or to this user and
/// sits in a directory no one else can change (owned by root or this user, and not writable
/// by others unless sticky): a link a consumer made in a directory it owns (when it owns more
/// than the mirror directory) is not followed, and the path keeps it as written, which then
/// never matches the real path of what it opens (see `dir::Parent::open`): that mirror is not
/// written. A directory that does not exist yet keeps its remaining components as written.
pub fn resolve(dir: &Path) -> PathBuf {
    let absolute = crate::store::absolute_lexically(dir);
    let (Some(parent), Some(name)) = (absolute.parent(), absolute.file_name()) else {
        return absolute;
    };
    match resolve_trusted(parent) {
        Some(real) => real.join(name),
        None => absolute,
    }
}

/// The real path of `path` (absolute, lexically clean), following only trusted links (see
/// [`resolve`]); components from the first missing one on are kept as written. `None` when a
/// link on the way is not to be trusted (or there are too many).
fn resolve_trusted(path: &Path) -> Option<PathBuf> {
    use std::collections::VecDeque;
    use std::os::unix::fs::MetadataExt;
    use std::path::Component;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    let ours = |uid: u32| uid == 0 || uid == euid;
    let mut real = PathBuf::from("/");
    let owned: Vec<std::ffi::OsString> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            _ => None,
        })
        .collect();
    // Components are kept as owned strings; `..` from a link target is a marker.
    let mut queue: VecDeque<Option<std::ffi::OsString>> = owned.into_iter().map(Some).collect();
    let mut hops = 0;
    while let Some(part) = queue.pop_front() {
        let Some(part) = part else {
            real.pop();
            continue;
        };
        let next = real.join(&part);
        match std::fs::symlink_metadata(&next) {
            Err(_) => {
                // Missing (or not to be looked at): the rest as written.
                real = next;
                for p in queue.into_iter() {
                    match p {
                        Some(p) => real.push(p),
                        None => {
                            real.pop();
                        }
                    }
                }
                return Some(real);
            }
            Ok(md) if md.file_type().is_symlink() => {
                hops += 1;
                let holder = std::fs::metadata(&real).ok()?;
                let holder_safe = ours(holder.uid())
                    && (holder.mode() & 0o022 == 0 || holder.mode() & 0o1000 != 0);
                if hops > 40 || !ours(md.uid()) || !holder_safe {
                    return None;
                }
                let target = std::fs::read_link(&next).ok()?;
                if target.is_absolute() {
                    real = PathBuf::from("/");
                }
                let mut parts: Vec<Option<std::ffi::OsString>> = Vec::new();
                for c in target.components() {
                    match c {
                        Component::Normal(n) => parts.push(Some(n.to_os_string())),
                        Component::ParentDir => parts.push(None),
                        _ => {}
                    }
                }
                for p in parts.into_iter().rev() {
                    queue.push_front(p);
                }
            }
            Ok(_) => real = next,
        }
    }
    Some(real)
}

#[cfg(test)]
mod tests;
