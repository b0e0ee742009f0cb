//! What is at a service file's path, its links followed the way the service manager follows
//! them: nothing, a regular file (at the path or where its links lead), or something no install
//! writes through: a mask (a link to `/dev/null`, what `systemctl --user mask` makes), a broken
//! link (dangling, or a loop), a directory, a device, a FIFO or a socket. It also words what
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
    /// A link to `/dev/null`.
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
    /// Where the links at `path` end, when `path` is a link: what every message names beside
    /// it (a link to a system file must not pass for the unit). For a loop, the link's own text.
    pub(super) link_to: Option<PathBuf>,
    pub(super) kind: Kind,
    pub(super) role: Role,
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
        let found = |link_to, kind| Found {
            path: path.to_path_buf(),
            link_to,
            kind,
            role,
        };
        let meta = match std::fs::symlink_metadata(path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(found(None, Kind::Absent)),
            Err(e) => return Err(cannot_read(path, &e)),
        };
        if !meta.file_type().is_symlink() {
            return Ok(found(None, kind_of(&meta)));
        }
        let Some(target) = follow(path) else {
            let text = std::fs::read_link(path).ok();
            return Ok(found(text, Kind::Loop));
        };
        let kind = match std::fs::metadata(&target) {
            Ok(meta) => kind_of(&meta),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Kind::Dangling,
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => Kind::Dangling,
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => Kind::Loop,
            Err(e) => return Err(cannot_read(path, &e)),
        };
        Ok(found(Some(target), kind))
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
            Kind::Masked => Verdict::Never(match self.role {
                Role::Unit => format!(
                    "{path} is a link to /dev/null: claude-tokend.service is masked \
                     (`systemctl --user mask`), and systemd starts no masked unit whatever is \
                     written. Run `systemctl --user unmask claude-tokend` first (it removes the \
                     link), then install again; --force does not override a mask"
                ),
                Role::DropIn | Role::Agent => format!(
                    "{path} is a link to /dev/null (masked): whatever is written through it is \
                     lost, and nothing is read from it. To have it written, remove the link \
                     (`{rm}`), then install again; --force does not remove it"
                ),
            }),
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
            (Kind::Masked, true) => format!("masked: a link to {target}"),
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
