//! The service files on disk: a digest line that tells this command's own unedited output from a
//! hand edit, the comparison with what is there (absent, the same, ours, edited; through a
//! link, the file it leads to), the mode a file holding the right content should have, the
//! warning about directories others may write, and removing. It never decides which files to
//! write, and writes none (`commit` puts them in place).

use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::found::{Found, Kind, Role};
use super::home::parent;
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
    /// to [`FILE_MODE`] (whoever can write it can change what the service runs).
    pub(super) loose_mode: Option<u32>,
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
        let (existing, old) = read_state(&found, Some(&content))?;
        let loose_mode = match existing {
            Existing::Same => std::fs::metadata(found.file())
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
        })
    }

    /// Where the new content goes: the file a link leads to (a unit kept in a dotfiles
    /// repository stays there, as the credentials file does), else the path itself (nothing
    /// there, or a broken link that --force replaces by a plain file).
    pub(super) fn dest(&self) -> &Path {
        self.found.file()
    }
}

/// What is at `found` compared with `content` (`None`: only whether it is ours), and the text
/// it held when that differs. What is not a regular file is never read, and is not ours.
fn read_state(found: &Found, content: Option<&str>) -> Result<(Existing, Option<String>), u8> {
    match found.kind {
        Kind::Absent => return Ok((Existing::Absent, None)),
        Kind::File => {}
        _ => return Ok((Existing::Edited, None)),
    }
    Ok(match std::fs::read_to_string(found.file()) {
        Ok(old) if Some(old.as_str()) == content => (Existing::Same, None),
        Ok(old) => (digest_state(&old), Some(old)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => (Existing::Absent, None),
        // Not UTF-8: certainly not ours.
        Err(e) if e.kind() == io::ErrorKind::InvalidData => (Existing::Edited, None),
        Err(e) => {
            tell!("claude-tokend: cannot read {}: {e}", found.named());
            return Err(exit::FAILURE);
        }
    })
}

/// Whether the file at `found` is absent, our own unedited output, or edited (or not ours).
pub(super) fn state_of(found: &Found) -> Result<Existing, u8> {
    read_state(found, None).map(|(state, _)| state)
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

/// Removes what is at `found` (a link, never what it points at: that one is the user's, in a
/// dotfiles repository say) and says so.
pub(super) fn remove_found(found: &Found) -> Result<(), u8> {
    remove_saying(&found.path, &removed_line(found))
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

/// Warns about each directory from those holding `files` up to `home` (inclusive; up to `/`
/// for one outside it), and the one holding each link's file, that its group or everyone may
/// write in without the sticky bit: whoever can write there can rename what is below it and put
/// another unit, drop-in or agent in place, and so run what they like as this user. A warning
/// and not a fix: the directory was there before this command, made by the user or another
/// tool, perhaps shared on purpose, and a mode changed behind their back is a surprise of its
/// own.
pub(super) fn warn_if_others_write(files: &[&Found], home: &Path) {
    let mut dirs: Vec<PathBuf> = Vec::new();
    let mut add = |d: PathBuf| {
        if !dirs.contains(&d) {
            dirs.push(d);
        }
    };
    for f in files {
        let dir = parent(&f.path);
        let up_to_home = dir.starts_with(home);
        for d in dir.ancestors() {
            add(d.to_path_buf());
            if up_to_home && d == home {
                break;
            }
        }
        if let (Some(target), Kind::File) = (&f.link_to, &f.kind) {
            add(parent(target));
        }
    }
    for dir in dirs {
        // Not made yet: this command makes it, 0755.
        let Ok(meta) = std::fs::metadata(&dir) else {
            continue;
        };
        let mode = meta.mode();
        if mode & 0o022 != 0 && mode & 0o1000 == 0 {
            tell!(
                "claude-tokend: warning: {} is writable by {} (mode {:o}): whoever can write there \
                 can change what the service runs. Unless that is what you want: chmod go-w {}",
                dir.display(),
                if mode & 0o002 != 0 {
                    "everyone"
                } else {
                    "its group"
                },
                mode & 0o7777,
                super::step::shell_quote(&dir.to_string_lossy()),
            );
        }
    }
}

/// Sets a file holding the right content whose mode lets others write it to [`FILE_MODE`],
/// and says so; a file that cannot be changed (another user's, through a link) is warned about.
pub(super) fn fix_mode(f: &Planned) {
    let Some(was) = f.loose_mode else {
        return;
    };
    tokend_core::seams::pause_at("service-fix-mode");
    let file = f.dest();
    match std::fs::set_permissions(file, std::fs::Permissions::from_mode(FILE_MODE)) {
        Ok(()) => say!(
            "Fixed the mode of {} (was {was:o}, now {FILE_MODE:o}: only its owner may change what \
             the service runs)",
            f.found.named()
        ),
        Err(e) => tell!(
            "claude-tokend: warning: {} is mode {was:o}: others may change what the service runs, \
             and its mode cannot be changed here ({e}); run: chmod {FILE_MODE:o} {}",
            f.found.named(),
            super::step::shell_quote(&file.to_string_lossy())
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
