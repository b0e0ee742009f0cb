//! What is at a service file's path, its links followed the way the service manager follows
//! them: nothing, a regular file (at the path or where its links lead), or something no install
//! writes through: a mask (a link to `/dev/null`, what `systemctl --user mask` makes, or, for
//! systemd, an empty file: systemd.unit(5)), a broken link (dangling, or a loop), a directory, a
//! device, a FIFO or a socket. It also words what
//! `install` and `uninstall` say about each, and what the user can do. It reads the file system
//! (links and file types, never a file's content) and writes nothing.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::home::parent;
use super::step::shell_quote;
use crate::exit;

/// The kernel's bound on a chain of links (ELOOP past it).
const MAX_LINKS: usize = 40;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Absent,
    /// A regular file, at the path or where its links lead.
    File,
    /// A link to `/dev/null`; for a unit or a drop-in, also an empty file (at the path or where
    /// its links lead), which systemd reads as a mask just the same.
    Masked,
    /// A link to nothing: its target does not exist.
    Dangling,
    /// A link that cannot be followed (it loops, or goes on past the kernel's bound).
    Loop,
    /// A directory, at the path or where its link leads.
    Directory,
    /// A device, a FIFO or a socket (its name), at the path or where its link leads.
    Special(&'static str),
}

/// Which file a message speaks of: a mask means something else for each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Role {
    Unit,
    DropIn,
    Agent,
}

pub(super) struct Found {
    pub(super) path: PathBuf,
    /// Where the links at `path` end, when `path` is a link, with every link on the way resolved
    /// (linked directories too): what every message names beside it, so a link to a system file
    /// never passes for the unit, whatever harmless-looking directory it goes through. For a
    /// loop, the link's own text.
    pub(super) link_to: Option<PathBuf>,
    pub(super) kind: Kind,
    pub(super) role: Role,
    /// A mask that is an empty file, not the null device.
    pub(super) empty: bool,
}

/// What `install` may do with a file that is there and not a regular one.
pub(super) enum Verdict {
    /// Written as usual (a regular file, or nothing there).
    Write,
    /// Never written, --force or not: a mask, a device, a FIFO, a directory. The text says why
    /// and what to do.
    Never(String),
    /// Replaced by a plain file only with --force: the link itself is replaced, never written
    /// through (a broken link, or one to a directory, holds nothing that could be lost).
    ReplaceLinkWithForce(String),
}

impl Found {
    pub(super) fn at(path: &Path, role: Role) -> Result<Found, u8> {
        // systemd masks a unit (and hides a drop-in) whose file is empty; launchd has no such
        // rule, and an empty plist is only a broken one.
        let empty_masks = role != Role::Agent;
        let found = |link_to, meta: Option<&std::fs::Metadata>, kind| {
            let empty = empty_masks && kind == Kind::File && meta.is_some_and(|m| m.len() == 0);
            Found {
                path: path.to_path_buf(),
                link_to,
                kind: if empty { Kind::Masked } else { kind },
                role,
                empty,
            }
        };
        let meta = match std::fs::symlink_metadata(path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(found(None, None, Kind::Absent));
            }
            Err(e) => return Err(cannot_read(path, &e)),
        };
        if !meta.file_type().is_symlink() {
            return Ok(found(None, Some(&meta), kind_of(&meta)));
        }
        let Some(target) = follow(path) else {
            let text = std::fs::read_link(path).ok();
            return Ok(found(text, None, Kind::Loop));
        };
        let (meta, kind) = match std::fs::metadata(&target) {
            Ok(meta) => {
                let kind = kind_of(&meta);
                (Some(meta), kind)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => (None, Kind::Dangling),
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => (None, Kind::Dangling),
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => (None, Kind::Loop),
            Err(e) => return Err(cannot_read(path, &e)),
        };
        Ok(found(Some(resolved(&target)), meta.as_ref(), kind))
    }

    pub(super) fn is_link(&self) -> bool {
        self.link_to.is_some()
    }

    /// Whether anything is there (a dangling link too).
    pub(super) fn present(&self) -> bool {
        self.kind != Kind::Absent
    }

    /// The path, and where it leads when it is a link: `P` or `P (a link to T)`.
    pub(super) fn named(&self) -> String {
        match (&self.link_to, &self.kind) {
            (Some(t), Kind::Loop) => format!(
                "{} (a link to {}, which loops)",
                self.path.display(),
                t.display()
            ),
            (Some(t), _) => format!("{} (a link to {})", self.path.display(), t.display()),
            (None, _) => self.path.display().to_string(),
        }
    }

    /// The file the content is read from and written to: the path, or where its links end.
    pub(super) fn file(&self) -> &Path {
        match (&self.link_to, &self.kind) {
            (Some(t), Kind::File) => t,
            _ => &self.path,
        }
    }

    /// What `install` may do here; see [`Verdict`].
    pub(super) fn verdict(&self) -> Verdict {
        let path = self.path.display();
        let rm = format!("rm {}", shell_quote(&self.path.to_string_lossy()));
        let target = self
            .link_to
            .as_deref()
            .map(|t| t.display().to_string())
            .unwrap_or_default();
        match &self.kind {
            Kind::Absent | Kind::File => Verdict::Write,
            Kind::Masked => {
                let how = self.mask_text();
                let it = if self.is_link() {
                    "the link"
                } else {
                    "the file"
                };
                Verdict::Never(match self.role {
                    Role::Unit => format!(
                        "{path} is {how}: claude-tokend.service is masked (systemd masks a unit \
                         whose file is empty or a link to /dev/null, as `systemctl --user mask` \
                         makes it), and systemd starts no masked unit whatever is written. Run \
                         `systemctl --user unmask claude-tokend` first (it removes {it}), then \
                         install again; --force does not override a mask"
                    ),
                    Role::DropIn | Role::Agent => format!(
                        "{path} is {how} (masked): nothing is read from it, and whatever is \
                         written through it is lost. To have it written, remove {it} (`{rm}`), \
                         then install again; --force does not remove it"
                    ),
                })
            }
            Kind::Special(what) if self.is_link() => Verdict::Never(format!(
                "{path} is a link to {target}, {what}, not a regular file: nothing is written \
                 through it. To have the file written, remove the link (`{rm}`), then install \
                 again; --force does not remove it"
            )),
            Kind::Special(what) => Verdict::Never(format!(
                "{path} is {what}, not a regular file: nothing is written there. To have the \
                 file written, remove it (`{rm}`), then install again; --force does not remove it"
            )),
            Kind::Directory if self.is_link() => Verdict::ReplaceLinkWithForce(format!(
                "{path} is a link to {target}, a directory, not a file: nothing is written \
                 through it. Rerun with --force to replace the link by a plain file ({target} is \
                 left as it is), or point the link at a file"
            )),
            Kind::Directory => Verdict::Never(format!(
                "{path} is a directory, not a file: nothing is written there, and --force does \
                 not remove a directory. Move it away (`mv {0} {0}.old`), then install again",
                shell_quote(&self.path.to_string_lossy())
            )),
            Kind::Dangling => {
                let dir = self.link_to.as_deref().map(parent);
                let missing_dir = dir.as_deref().filter(|d| !d.is_dir());
                Verdict::ReplaceLinkWithForce(format!(
                    "{path} is a link to {target}, which does not exist{}: nothing is written \
                     through it. Rerun with --force to replace the link by a plain file, or \
                     create {target} (or point the link elsewhere) and install again",
                    missing_dir
                        .map(|d| format!(" (nor does its directory, {})", d.display()))
                        .unwrap_or_default()
                ))
            }
            Kind::Loop => Verdict::ReplaceLinkWithForce(format!(
                "{} cannot be followed (too many levels of symbolic links): nothing is written \
                 through it. Rerun with --force to replace the link by a plain file, or fix it \
                 (`ls -l {}`)",
                self.named(),
                shell_quote(&self.path.to_string_lossy())
            )),
        }
    }

    /// How a mask is made: `a link to /dev/null`, `empty`, `a link to T, which is empty`.
    fn mask_text(&self) -> String {
        match (&self.link_to, self.empty) {
            (Some(t), true) => format!("a link to {}, which is empty", t.display()),
            (Some(t), false) => format!("a link to {}", t.display()),
            (None, true) => "empty".to_owned(),
            (None, false) => "the null device".to_owned(),
        }
    }

    /// What is there when it is not a regular file, links and all: `a link to T, which does
    /// not exist`, `a FIFO`, `masked: a link to /dev/null`; `None` for a file or nothing.
    pub(super) fn describe_odd(&self) -> Option<String> {
        let target = self
            .link_to
            .as_deref()
            .map(|t| t.display().to_string())
            .unwrap_or_default();
        let what = match &self.kind {
            Kind::Absent | Kind::File => return None,
            Kind::Masked => "masked".to_owned(),
            Kind::Dangling => return Some(format!("a link to {target}, which does not exist")),
            Kind::Loop => return Some("a link that loops".to_owned()),
            Kind::Directory => "a directory".to_owned(),
            Kind::Special(what) => (*what).to_owned(),
        };
        Some(match (&self.kind, self.is_link()) {
            (Kind::Masked, _) => format!("masked: {}", self.mask_text()),
            (_, true) => format!("a link to {target}, {what}"),
            (_, false) => what,
        })
    }
}

/// The file type, as a message names it.
fn kind_of(meta: &std::fs::Metadata) -> Kind {
    let t = meta.file_type();
    if t.is_file() {
        Kind::File
    } else if t.is_dir() {
        Kind::Directory
    } else if t.is_char_device() && is_dev_null(meta) {
        Kind::Masked
    } else if t.is_char_device() || t.is_block_device() {
        Kind::Special("a device")
    } else if t.is_fifo() {
        Kind::Special("a FIFO")
    } else if t.is_socket() {
        Kind::Special("a socket")
    } else {
        Kind::Special("not a file")
    }
}

/// Whether `meta` is the null device (by its device number, as systemd tells a mask).
fn is_dev_null(meta: &std::fs::Metadata) -> bool {
    std::fs::metadata("/dev/null").is_ok_and(|null| null.rdev() == meta.rdev())
}

/// `target` (the end of a chain of links) with every link on its way resolved, as far as it
/// exists: the name a message can give for where a link really leads.
fn resolved(target: &Path) -> PathBuf {
    if let Ok(real) = std::fs::canonicalize(target) {
        return real;
    }
    // Dangling: the directories on its way that exist, resolved; the rest as named.
    let mut rest = Vec::new();
    let mut at = target;
    while let (Some(dir), Some(name)) = (at.parent(), at.file_name()) {
        rest.push(name);
        if let Ok(real) = std::fs::canonicalize(dir) {
            return rest.iter().rev().fold(real, |p, n| p.join(n));
        }
        at = dir;
    }
    target.to_path_buf()
}

/// Where the chain of links at `path` ends (made absolute beside each link), or `None` when it
/// goes on past the kernel's bound (a loop).
fn follow(path: &Path) -> Option<PathBuf> {
    let mut current = path.to_path_buf();
    for _ in 0..MAX_LINKS {
        match std::fs::symlink_metadata(&current) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let link = std::fs::read_link(&current).ok()?;
                current = parent(&current).join(link);
            }
            _ => return Some(current),
        }
    }
    None
}

fn cannot_read(path: &Path, e: &io::Error) -> u8 {
    // A directory on the way is a broken link, or a file: say where to look.
    let advice = match e.raw_os_error() {
        Some(libc::ELOOP | libc::ENOTDIR) => format!(
            "; a directory on its path is a link that loops, or not a directory: see `ls -ld {}`",
            shell_quote(&parent(path).to_string_lossy())
        ),
        _ => String::new(),
    };
    tell!("claude-tokend: cannot read {}: {e}{advice}", path.display());
    exit::FAILURE
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn links_are_followed_and_classified() {
        let dir = std::env::temp_dir().join(format!("found-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let at = |name: &str| Found::at(&dir.join(name), Role::Unit).unwrap();
        std::fs::write(dir.join("file"), "x").unwrap();
        symlink("file", dir.join("to-file")).unwrap();
        symlink("/dev/null", dir.join("masked")).unwrap();
        symlink("nowhere/x", dir.join("dangling")).unwrap();
        symlink("loop", dir.join("loop")).unwrap();
        symlink(".", dir.join("to-dir")).unwrap();
        assert_eq!(at("none").kind, Kind::Absent);
        assert_eq!(at("file").kind, Kind::File);
        let linked = at("to-file");
        assert_eq!(linked.kind, Kind::File);
        assert_eq!(linked.file(), dir.join("file"));
        assert_eq!(at("masked").kind, Kind::Masked);
        assert_eq!(at("dangling").kind, Kind::Dangling);
        assert_eq!(at("loop").kind, Kind::Loop);
        assert_eq!(at("to-dir").kind, Kind::Directory);
        assert!(matches!(at("masked").verdict(), Verdict::Never(t) if t.contains("unmask")));
        assert!(matches!(
            at("loop").verdict(),
            Verdict::ReplaceLinkWithForce(_)
        ));
        assert!(matches!(at("file").verdict(), Verdict::Write));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
