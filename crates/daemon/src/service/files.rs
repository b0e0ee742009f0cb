//! The service files on disk: a digest line that tells this command's own unedited output from a
//! hand edit, the comparison with what is there (absent, the same, ours, edited; through a
//! link, the file it leads to), the mode a file holding the right content should have (set on
//! the very file that was read and judged), and removing. It never decides which files to
//! write, and writes none (`commit` puts them in place).

use std::fs::File;
use std::io::{self, Read as _, Write as _};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::commit::removable;
use super::found::{Found, Kind, Role};
use super::step::{by_hand, shell_quote};
use crate::exit;

/// A service file's mode: the service manager reads it, only its owner may change it (any other
/// writer could change what the service runs, as that user).
pub(super) const FILE_MODE: u32 = 0o644;

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
    /// Edited by hand, or not ours at all (not even a regular file): replaced only with
    /// `--force`, if at all (see [`Found::verdict`]).
    Edited,
}

pub(super) struct Planned {
    pub(super) found: Found,
    pub(super) content: String,
    pub(super) existing: Existing,
    /// What the file held before, when it held something else.
    pub(super) old: Option<String>,
    /// The file's mode when it holds this content already but others may write it: it is set
    /// to [`FILE_MODE`] (whoever can write it can change what the service runs), on `judged`.
    pub(super) loose_mode: Option<u32>,
    /// The file that was read and compared, open: a mode is fixed on it, never on whatever
    /// the path leads to by then.
    judged: Option<File>,
}

impl Planned {
    /// The file at `path` with `body` (and its digest line), compared with what is there.
    pub(super) fn at(
        path: PathBuf,
        role: Role,
        body: Result<String, u8>,
        syntax: Syntax,
    ) -> Result<Planned, u8> {
        let content = with_digest(&body?, syntax);
        let found = Found::at(&path, role)?;
        let (existing, old, judged) = read_state(&found, Some(&content))?;
        let loose_mode = match (existing, &judged) {
            (Existing::Same, Some(file)) => file
                .metadata()
                .ok()
                .map(|m| m.mode() & 0o7777)
                .filter(|m| m & 0o022 != 0),
            _ => None,
        };
        Ok(Planned {
            found,
            content,
            existing,
            old,
            loose_mode,
            judged,
        })
    }

    /// Where the new content goes: the file a link leads to (a unit kept in a dotfiles
    /// repository stays there, as the credentials file does), else the path itself (nothing
    /// there, or a broken link that --force replaces by a plain file).
    pub(super) fn dest(&self) -> &Path {
        self.found.file()
    }
}

/// What is at `found` compared with `content` (`None`: only whether it is ours), the text it
/// held when that differs, and the file read, open. What is not a regular file is never read,
/// and is not ours.
fn read_state(
    found: &Found,
    content: Option<&str>,
) -> Result<(Existing, Option<String>, Option<File>), u8> {
    match found.kind {
        Kind::Absent => return Ok((Existing::Absent, None, None)),
        Kind::File => {}
        _ => return Ok((Existing::Edited, None, None)),
    }
    let mut file = match open_judged(found.file()) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Existing::Absent, None, None)),
        Err(e) => {
            tell!("claude-tokend: cannot read {}: {e}", found.named());
            return Err(exit::FAILURE);
        }
    };
    let mut old = String::new();
    Ok(match file.read_to_string(&mut old) {
        Ok(_) if Some(old.as_str()) == content => (Existing::Same, None, Some(file)),
        Ok(_) => (digest_state(&old), Some(old), Some(file)),
        // Not UTF-8: certainly not ours.
        Err(e) if e.kind() == io::ErrorKind::InvalidData => (Existing::Edited, None, Some(file)),
        Err(e) => {
            tell!("claude-tokend: cannot read {}: {e}", found.named());
            return Err(exit::FAILURE);
        }
    })
}

/// Opens the regular file at `path` for reading, never through a link put there since it was
/// looked at (O_NOFOLLOW), nor blocking on a FIFO swapped in (O_NONBLOCK); anything but a
/// regular file is an error: the path changed while it was being read.
fn open_judged(path: &Path) -> io::Result<File> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => changed(),
            _ => e,
        })?;
    if !file.metadata()?.is_file() {
        return Err(changed());
    }
    Ok(file)
}

fn changed() -> io::Error {
    io::Error::other("it changed while it was being read; run the command again")
}

/// Whether the file at `found` is absent, our own unedited output, or edited (or not ours).
pub(super) fn state_of(found: &Found) -> Result<Existing, u8> {
    read_state(found, None).map(|(state, _, _)| state)
}

/// Says that the edited files are not replaced (`replacing`) or removed (`removing`) without
/// `--force`, and how to go on; the exit code to return.
pub(super) fn refuse_edited(replacing: &[&Found], removing: &[&Found], systemd: bool) -> u8 {
    let not = replacing
        .iter()
        .map(|f| (f, "replacing"))
        .chain(removing.iter().map(|f| (f, "removing")));
    for (found, verb) in not {
        tell!(
            "claude-tokend: {} exists and was edited by hand (or not written by `claude-tokend service install`); \
             not {verb} it.",
            found.named()
        );
    }
    let fix = match (replacing.is_empty(), removing.is_empty()) {
        (false, true) => "to replace it with a fresh copy (your edits are lost)",
        (true, false) => "to remove it anyway (your edits are lost)",
        _ => "to replace or remove them anyway (your edits are lost)",
    };
    tell!(
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

/// The line that says `found` was removed: a link is removed, never what it points at, and
/// the line says so.
pub(super) fn removed_line(found: &Found) -> String {
    let path = found.path.display();
    match (&found.link_to, &found.kind) {
        (Some(t), Kind::File | Kind::Directory | Kind::Special(_)) => format!(
            "Removed: {path} (a link; what it pointed at, {}, is kept)",
            t.display()
        ),
        (Some(t), Kind::Dangling) => format!(
            "Removed: {path} (a link to {}, which does not exist)",
            t.display()
        ),
        (_, Kind::Loop) => format!("Removed: {path} (a link that looped)"),
        _ => format!("Removed: {path}"),
    }
}

/// Refuses (exit 1) when any of `files` cannot be removed (see [`removable`]), naming each,
/// before anything is done: an uninstall that stopped the service, then could not take its
/// files away, would leave it to start again at the next login.
pub(super) fn refuse_unremovable(files: &[&Found]) -> Result<(), u8> {
    let mut refused = false;
    for f in files {
        if let Err(e) = removable(&f.path) {
            tell!("claude-tokend: cannot remove {} ({e})", f.named());
            refused = true;
        }
    }
    if refused {
        tell!("claude-tokend: nothing was stopped or removed.");
        return Err(exit::FAILURE);
    }
    Ok(())
}

/// Removes each of `files`, and says so: a link is removed, never what it points at (that one
/// is the user's, in a dotfiles repository say). One that cannot be removed after all (its
/// directory changed since it was checked) ends it: what is removed, what is not, and what to
/// run by hand: `rm -f` of the rest, then `then`. `before`: what the uninstall did already.
pub(super) fn remove_all(files: &[&Found], before: &[String], then: &[String]) -> Result<(), u8> {
    let mut done: Vec<String> = before.iter().map(|b| format!("  {b}\n")).collect();
    for (i, f) in files.iter().enumerate() {
        match std::fs::remove_file(&f.path) {
            Ok(()) => {
                say!("{}", removed_line(f));
                done.push(format!("  {} (removed)\n", f.path.display()));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                let left = &files[i..];
                let mut text = format!(
                    "claude-tokend: cannot remove {}: {e}; this uninstall is half done.\n\
                     claude-tokend: already changed:\n{}claude-tokend: not changed:\n",
                    f.path.display(),
                    done.concat()
                );
                for l in left {
                    text.push_str(&format!("  {} (not removed)\n", l.path.display()));
                }
                let _ = io::stderr().write_all(text.as_bytes());
                let paths: Vec<String> = left
                    .iter()
                    .map(|l| shell_quote(&l.path.to_string_lossy()))
                    .collect();
                by_hand(
                    std::iter::once(format!("rm -f {}", paths.join(" ")))
                        .chain(then.iter().cloned()),
                );
                return Err(exit::FAILURE);
            }
        }
    }
    Ok(())
}

/// Removes the file or link at `path`, then prints `line`; gone already is fine.
pub(super) fn remove_saying(path: &Path, line: &str) -> Result<(), u8> {
    match std::fs::remove_file(path) {
        Ok(()) => {
            say!("{line}");
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => {
            tell!("claude-tokend: cannot remove {}: {e}", path.display());
            Err(exit::FAILURE)
        }
    }
}

/// Sets a file holding the right content whose mode lets others write it to [`FILE_MODE`],
/// and says so; a file that cannot be changed (another user's, through a link) is warned about.
pub(super) fn fix_mode(f: &Planned) {
    let Some(was) = f.loose_mode else {
        return;
    };
    let Some(judged) = &f.judged else {
        return;
    };
    tokend_core::seams::pause_at("service-fix-mode");
    let file = f.dest();
    // fchmod(2) on the file that was judged: by its path, a link put there since (by whoever
    // may write that directory) would have its target's mode changed instead.
    match judged.set_permissions(std::fs::Permissions::from_mode(FILE_MODE)) {
        Ok(()) => say!(
            "Fixed the mode of {} (was {was:o}, now {FILE_MODE:o}: only its owner may change what \
             the service runs)",
            f.found.named()
        ),
        Err(e) => tell!(
            "claude-tokend: warning: {} is mode {was:o}: others may change what the service runs, \
             and its mode cannot be changed here ({e}); run: chmod {FILE_MODE:o} {}",
            f.found.named(),
            shell_quote(&file.to_string_lossy())
        ),
    }
}

/// How `service status` describes the file at `path`: installed (by this command, unedited),
/// edited, or something odd; `None` when nothing is there.
pub(super) fn describe_file(path: &Path, role: Role) -> Result<Option<String>, u8> {
    let found = Found::at(path, role)?;
    if let Some(odd) = found.describe_odd() {
        let hint = match (&found.kind, role) {
            (Kind::Masked, Role::Unit) => "; `systemctl --user unmask claude-tokend` lifts it",
            (Kind::Masked, _) => "",
            (Kind::Dangling | Kind::Loop | Kind::Directory, _) if found.is_link() => {
                "; `service install --force` replaces the link with a plain file, \
                 `service uninstall --force` removes it"
            }
            _ => "; not written by `claude-tokend service install`",
        };
        return Ok(Some(format!("{odd}{hint}")));
    }
    let through = |text: &str| match &found.link_to {
        Some(t) => format!("{text}; through a link to {}", t.display()),
        None => text.to_owned(),
    };
    Ok(match state_of(&found)? {
        Existing::Absent => None,
        Existing::Ours | Existing::Same => {
            Some(through("installed by `claude-tokend service install`"))
        }
        Existing::Edited => Some(through(
            "installed; edited by hand or not written by `claude-tokend service install`",
        )),
    })
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
