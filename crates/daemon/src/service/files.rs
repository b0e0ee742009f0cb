//! The service files on disk: a digest line that tells this command's own unedited output from a
//! hand edit, the comparison with what is there (absent, the same, ours, edited), writing
//! through a temp file and a rename (through a link, to the file it points at), in modes that
//! do not follow the umask, and removing. It never decides which files to write.

use std::ffi::OsString;
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokend_core::store::resolve_symlinks;

use super::home::parent;
use crate::exit;

/// A service file's mode: the service manager reads it, only its owner may change it (any other
/// writer could change what the service runs, as that user).
const FILE_MODE: u32 = 0o644;
/// A directory this command creates: 0755, less what the umask takes away from group and
/// others (0700 under umask 077), never writable by them whatever the umask.
const DIR_MODE: u32 = 0o755;

/// Marks files this command wrote, with a digest of the rest of the file, so a reinstall can
/// replace its own earlier output (after an upgrade, or a moved binary) but never a hand edit.
const DIGEST_TAG: &str = "claude-tokend-digest: ";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Syntax {
    /// `#` comments: systemd units and drop-ins.
    Hash,
    /// XML comments after the `<?xml …?>` line: plists.
    Xml,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Existing {
    Absent,
    /// Byte for byte what would be written.
    Same,
    /// Written by an earlier install and not edited since: safe to replace.
    Ours,
    /// Edited by hand, or not ours at all: replaced only with `--force`.
    Edited,
}

pub(super) struct Planned {
    pub(super) path: PathBuf,
    pub(super) content: String,
    pub(super) existing: Existing,
    /// What the file held before, when it held something else.
    pub(super) old: Option<String>,
}

impl Planned {
    pub(super) fn new(
        path: PathBuf,
        body: Result<String, u8>,
        syntax: Syntax,
    ) -> Result<Planned, u8> {
        Ok(Planned {
            path,
            content: with_digest(&body?, syntax),
            existing: Existing::Absent,
            old: None,
        })
    }

    pub(super) fn compare(mut self) -> Result<Planned, u8> {
        let (existing, old) = read_state(&self.path, Some(&self.content))?;
        self.existing = existing;
        self.old = old;
        Ok(self)
    }

    /// Writes through a temp file and a rename, so the service manager never reads half a file.
    /// A link at the path (a unit kept in a dotfiles repository) stays: the file it points at
    /// gets the new content, as the credentials file does.
    pub(super) fn write(&self) -> Result<(), u8> {
        let fail = |what: &str, e: io::Error| {
            eprintln!("claude-tokend: cannot {what} {}: {e}", self.path.display());
            exit::FAILURE
        };
        let target = resolve_symlinks(&self.path).map_err(|e| fail("follow the links of", e))?;
        let dir = parent(&target);
        create_dirs(&dir).map_err(|e| fail("create the directory of", e))?;
        let mut name = OsString::from(".");
        name.push(target.file_name().unwrap_or_default());
        name.push(format!(".tmp{}", std::process::id()));
        let tmp = dir.join(name);
        let result =
            write_new(&tmp, self.content.as_bytes()).and_then(|()| std::fs::rename(&tmp, &target));
        if let Err(e) = result {
            let _ = std::fs::remove_file(&tmp);
            return Err(fail("write", e));
        }
        Ok(())
    }
}

/// A new file at `tmp` holding `bytes`, [`FILE_MODE`] whatever the umask (which only takes
/// bits away, so the mode is set again once the file is there), on disk before it is renamed.
fn write_new(tmp: &Path, bytes: &[u8]) -> io::Result<()> {
    let _ = std::fs::remove_file(tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(tmp)?;
    file.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Creates `dir` and whatever of its parents is missing, each [`DIR_MODE`] less the umask's
/// group and other bits, never less than the owner's own `rwx` (a umask of 0277 would leave a
/// directory nobody can write the file into). Directories that are there are left as they are.
pub(super) fn create_dirs(dir: &Path) -> io::Result<()> {
    let missing: Vec<&Path> = dir
        .ancestors()
        .take_while(|d| std::fs::symlink_metadata(d).is_err())
        .collect();
    for d in missing.into_iter().rev() {
        match std::fs::DirBuilder::new().mode(DIR_MODE).create(d) {
            Ok(()) => {}
            // Made meanwhile by someone else: theirs, left as it is.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
        let mode = std::fs::metadata(d)?.mode() & DIR_MODE | 0o700;
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// Warns when the directory holding `path` (and, for a link, the one holding the file it
/// points at) lets group or others write in it: whoever can write there can put another unit
/// or drop-in in place, and so run what they like as this user. A warning and not a fix: the
/// directory was there before this command, made by the user or another tool, perhaps shared
/// on purpose, and a mode changed behind their back is a surprise of its own.
pub(super) fn warn_if_others_write(path: &Path) {
    let mut dirs = vec![parent(path)];
    if let Ok(target) = resolve_symlinks(path)
        && parent(&target) != dirs[0]
    {
        dirs.push(parent(&target));
    }
    for dir in dirs {
        if let Ok(meta) = std::fs::metadata(&dir)
            && meta.mode() & 0o022 != 0
        {
            eprintln!(
                "claude-tokend: warning: {} is writable by {} (mode {:o}): whoever can write there \
                 can change what the service runs. Unless that is what you want: chmod go-w {}",
                dir.display(),
                if meta.mode() & 0o002 != 0 {
                    "everyone"
                } else {
                    "its group"
                },
                meta.mode() & 0o7777,
                super::step::shell_quote(&dir.to_string_lossy()),
            );
        }
    }
}

/// What is at `path` compared with `content` (`None`: only whether it is ours), and the text
/// it held when that differs. Links are followed, as the service manager follows them; what is
/// not a regular file (a FIFO, a device) is never read, and is not ours.
fn read_state(path: &Path, content: Option<&str>) -> Result<(Existing, Option<String>), u8> {
    let fail = |e: io::Error| {
        eprintln!("claude-tokend: cannot read {}: {e}", path.display());
        exit::FAILURE
    };
    match std::fs::metadata(path) {
        Ok(meta) if !meta.is_file() => return Ok((Existing::Edited, None)),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Existing::Absent, None)),
        Err(e) => return Err(fail(e)),
    }
    Ok(match std::fs::read_to_string(path) {
        Ok(old) if Some(old.as_str()) == content => (Existing::Same, None),
        Ok(old) => (digest_state(&old), Some(old)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => (Existing::Absent, None),
        // Not UTF-8: certainly not ours.
        Err(e) if e.kind() == io::ErrorKind::InvalidData => (Existing::Edited, None),
        Err(e) => return Err(fail(e)),
    })
}

/// Whether the file at `path` is absent, our own unedited output, or edited (or not ours).
pub(super) fn state_of(path: &Path) -> Result<Existing, u8> {
    read_state(path, None).map(|(state, _)| state)
}

/// Says that the edited files are not replaced (`replacing`) or removed (`removing`) without
/// `--force`, and how to go on; the exit code to return.
pub(super) fn refuse_edited(replacing: &[&Path], removing: &[&Path], systemd: bool) -> u8 {
    let not = replacing
        .iter()
        .map(|p| (p, "replacing"))
        .chain(removing.iter().map(|p| (p, "removing")));
    for (path, verb) in not {
        eprintln!(
            "claude-tokend: {} exists and was edited by hand (or not written by `claude-tokend service install`); \
             not {verb} it.",
            path.display()
        );
    }
    let fix = match (replacing.is_empty(), removing.is_empty()) {
        (false, true) => "to replace it with a fresh copy (your edits are lost)",
        (true, false) => "to remove it anyway (your edits are lost)",
        _ => "to replace or remove them anyway (your edits are lost)",
    };
    eprintln!(
        "claude-tokend: {fix}, rerun with --force{}",
        if systemd && !replacing.is_empty() {
            "; keep your own settings in a drop-in (`systemctl --user edit claude-tokend`), which survives reinstalls"
        } else {
            ""
        }
    );
    exit::FAILURE
}

/// Whether `a` and `b` lead (through links) to one file: same device and inode.
pub(super) fn same_file(a: &Path, b: &Path) -> bool {
    let id = |p: &Path| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    matches!((id(a), id(b)), (Some(x), Some(y)) if x == y)
}

/// Whether anything (a file, a link, even a dangling one) is at `path`.
pub(super) fn present(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

/// The lines that differ between two versions of a file, comments and blank lines aside:
/// `-` for lines only in `old`, `+` for lines only in `new`, each in file order.
pub(super) fn changed_lines<'a>(old: &'a str, new: &'a str) -> Vec<(char, &'a str)> {
    let significant = |text: &'a str| {
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with("<!--"))
            .collect::<Vec<&str>>()
    };
    let (old, new) = (significant(old), significant(new));
    let gone = old.iter().filter(|l| !new.contains(l)).map(|l| ('-', *l));
    let came = new.iter().filter(|l| !old.contains(l)).map(|l| ('+', *l));
    gone.chain(came).collect()
}

/// Removes the file at `path`; a link there is removed, never the file it points at (that one
/// is the user's, in a dotfiles repository say, and may be tracked there).
pub(super) fn remove_file(path: &Path) -> Result<(), u8> {
    let target = std::fs::symlink_metadata(path)
        .is_ok_and(|m| m.file_type().is_symlink())
        .then(|| std::fs::read_link(path).ok())
        .flatten();
    match std::fs::remove_file(path) {
        Ok(()) => {
            match target {
                Some(t) => println!(
                    "Removed: {} (a link; what it pointed at, {}, is kept)",
                    path.display(),
                    t.display()
                ),
                None => println!("Removed: {}", path.display()),
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => {
            eprintln!("claude-tokend: cannot remove {}: {e}", path.display());
            Err(exit::FAILURE)
        }
    }
}

/// FNV-1a, 64 bits. Not a security measure (whoever can edit the file can fix the digest); it
/// only tells our own unedited output from a hand edit, and must stay stable across Rust
/// releases, which `DefaultHasher` does not promise.
fn digest(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// `body` with a line naming its digest: first for a unit, after the XML declaration for a plist.
fn with_digest(body: &str, syntax: Syntax) -> String {
    let d = digest(body);
    match syntax {
        Syntax::Hash => format!(
            "# Written by `claude-tokend service install`, which replaces it while it is unedited ({DIGEST_TAG}{d}).\n{body}"
        ),
        Syntax::Xml => {
            let (first, rest) = body.split_once('\n').unwrap_or((body, ""));
            format!(
                "{first}\n<!-- Written by `claude-tokend service install`, which replaces it while it is unedited ({DIGEST_TAG}{d}). -->\n{rest}"
            )
        }
    }
}

/// Whether `text` is unedited output of `with_digest`.
fn digest_state(text: &str) -> Existing {
    let mut body = String::with_capacity(text.len());
    let mut recorded = None;
    for line in text.split_inclusive('\n') {
        if recorded.is_none()
            && let Some(at) = line.find(DIGEST_TAG)
        {
            let hex = &line[at + DIGEST_TAG.len()..];
            recorded = Some(
                hex.chars()
                    .take_while(char::is_ascii_hexdigit)
                    .collect::<String>(),
            );
            continue;
        }
        body.push_str(line);
    }
    match recorded {
        Some(d) if d == digest(&body) => Existing::Ours,
        _ => Existing::Edited,
    }
}

/// `installed`, `installed, edited by hand`, or `None` when the file is absent.
pub(super) fn describe_file(path: &Path) -> Result<Option<&'static str>, u8> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(match digest_state(&text) {
            Existing::Ours => "installed by `claude-tokend service install`",
            _ => "installed; edited by hand or not written by `claude-tokend service install`",
        })),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => {
            eprintln!("claude-tokend: cannot read {}: {e}", path.display());
            Err(exit::FAILURE)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_tells_our_output_from_edits() {
        for syntax in [Syntax::Hash, Syntax::Xml] {
            let body = "<?xml version=\"1.0\"?>\nline one\nline two\n";
            let file = with_digest(body, syntax);
            assert_eq!(digest_state(&file), Existing::Ours, "{syntax:?}");
            assert_eq!(
                digest_state(&file.replace("line two", "line 2")),
                Existing::Edited
            );
            assert_eq!(
                digest_state(body),
                Existing::Edited,
                "no digest line: not ours"
            );
        }
        // Stable across releases: a fixed input has a fixed digest.
        assert_eq!(digest(""), "cbf29ce484222325");
        assert_eq!(digest("a"), "af63dc4c8601ec8c");
    }

    #[test]
    fn changed_lines_ignore_comments() {
        let old = "# a\nExecStart=/x\nEnvironment=A=1\nType=notify\n";
        let new = "# b\nExecStart=/y\nType=notify\n";
        assert_eq!(
            changed_lines(old, new),
            vec![
                ('-', "ExecStart=/x"),
                ('-', "Environment=A=1"),
                ('+', "ExecStart=/y")
            ]
        );
    }
}
