//! The service files on disk: a digest line that tells this command's own unedited output from a
//! hand edit, the comparison with what is there (absent, the same, ours, edited), writing
//! through a temp file and a rename, and removing. It never decides which files to write.

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};

use super::home::parent;
use crate::exit;

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
        self.existing = match std::fs::read_to_string(&self.path) {
            Ok(old) if old == self.content => Existing::Same,
            Ok(old) => {
                let state = digest_state(&old);
                self.old = Some(old);
                state
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Existing::Absent,
            // Not UTF-8: certainly not ours.
            Err(e) if e.kind() == io::ErrorKind::InvalidData => Existing::Edited,
            Err(e) => {
                eprintln!("claude-tokend: cannot read {}: {e}", self.path.display());
                return Err(exit::FAILURE);
            }
        };
        Ok(self)
    }

    /// Writes through a temp file and a rename, so the service manager never reads half a file.
    pub(super) fn write(&self) -> Result<(), u8> {
        let fail = |what: &str, e: io::Error| {
            eprintln!("claude-tokend: cannot {what} {}: {e}", self.path.display());
            exit::FAILURE
        };
        let dir = parent(&self.path);
        std::fs::create_dir_all(&dir).map_err(|e| fail("create the directory of", e))?;
        let mut name = OsString::from(".");
        name.push(self.path.file_name().unwrap_or_default());
        name.push(format!(".tmp{}", std::process::id()));
        let tmp = dir.join(name);
        let result =
            std::fs::write(&tmp, &self.content).and_then(|()| std::fs::rename(&tmp, &self.path));
        if let Err(e) = result {
            let _ = std::fs::remove_file(&tmp);
            return Err(fail("write", e));
        }
        Ok(())
    }
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

pub(super) fn remove_file(path: &Path) -> Result<(), u8> {
    match std::fs::remove_file(path) {
        Ok(()) => {
            println!("Removed: {}", path.display());
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
