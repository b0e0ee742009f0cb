//! Where a login lives: the contract's lookup order for the credentials path, the name Claude
//! Code gives its Keychain item, and the path rules both share (made absolute lexically, as
//! Claude Code's `path.resolve` does; symlinks followed only to find the bytes), and whether
//! two names reach one file. Functions of the values passed in: the process environment is read
//! in exactly one place, [`LocateEnv::from_process`].

use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The file name inside a config directory.
pub const FILE_NAME: &str = ".credentials.json";
/// The Keychain item's service name before any config-dir suffix (Claude Code 2.1.332's).
pub const KEYCHAIN_SERVICE: &str = "Claude Code-credentials";
/// The account used when `$USER` is unset or not a plain name.
pub const FALLBACK_ACCOUNT: &str = "claude-code-user";

/// The environment variables the location rules read, as values.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LocateEnv {
    /// `CLAUDE_SECURESTORAGE_CONFIG_DIR` (Claude Code's, undocumented): set but empty has a
    /// meaning of its own, so `Some("")` is kept.
    pub securestorage_dir: Option<OsString>,
    pub config_dir: Option<OsString>,
    pub home: Option<OsString>,
    pub user: Option<OsString>,
}

impl LocateEnv {
    pub fn from_process() -> Self {
        LocateEnv {
            securestorage_dir: std::env::var_os("CLAUDE_SECURESTORAGE_CONFIG_DIR"),
            config_dir: std::env::var_os("CLAUDE_CONFIG_DIR"),
            home: std::env::var_os("HOME"),
            user: std::env::var_os("USER"),
        }
    }

    /// The same environment as Claude Code sees it with `CLAUDE_CONFIG_DIR=dir` (a
    /// `--config-dir` entry): `CLAUDE_SECURESTORAGE_CONFIG_DIR` does not apply to it.
    pub fn with_config_dir(&self, dir: OsString) -> Self {
        LocateEnv {
            securestorage_dir: None,
            config_dir: Some(dir),
            ..self.clone()
        }
    }
}

/// Where the credentials path came from, for messages that say how to change it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// `--credentials` or `CLAUDE_TOKEND_CREDENTIALS`.
    Explicit,
    /// `$CLAUDE_SECURESTORAGE_CONFIG_DIR/.credentials.json`.
    SecureStorageDir,
    /// `$CLAUDE_CONFIG_DIR/.credentials.json`.
    ConfigDir,
    /// `$HOME/.claude/.credentials.json`.
    Home,
}

/// Neither an explicit path, a config directory nor `HOME` is set.
#[derive(Debug, PartialEq, Eq)]
pub struct NoHomeError;

impl fmt::Display for NoHomeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "cannot find the credentials file: HOME is not set; \
             set HOME, CLAUDE_CONFIG_DIR, or pass --credentials PATH",
        )
    }
}

impl std::error::Error for NoHomeError {}

/// The contract's lookup order: explicit path, then `CLAUDE_SECURESTORAGE_CONFIG_DIR` (set but
/// empty: the home default), then `CLAUDE_CONFIG_DIR`, then `HOME`. Other empty values count as
/// unset, as a shell's `VAR=` usually means "not this".
///
/// The path is made absolute lexically (see [`absolute_lexically`]), as Claude Code makes its
/// config directory absolute: the lock directories are named after that directory, so
/// `CLAUDE_CONFIG_DIR=.` must lock `<working dir>.lock` as Claude Code does, not `..lock`. Every
/// later use (locks, messages, the daemon's watch) takes the path from here.
pub fn locate(explicit: Option<&Path>, env: &LocateEnv) -> Result<(PathBuf, Origin), NoHomeError> {
    let non_empty = |v: &Option<OsString>| v.clone().filter(|v| !v.is_empty());
    let home_default = || {
        non_empty(&env.home).map(|home| {
            (
                PathBuf::from(home).join(".claude").join(FILE_NAME),
                Origin::Home,
            )
        })
    };
    let found = if let Some(p) = explicit.filter(|p| !p.as_os_str().is_empty()) {
        Some((p.to_path_buf(), Origin::Explicit))
    } else if let Some(dir) = &env.securestorage_dir {
        if dir.is_empty() {
            home_default()
        } else {
            Some((PathBuf::from(dir).join(FILE_NAME), Origin::SecureStorageDir))
        }
    } else if let Some(dir) = non_empty(&env.config_dir) {
        Some((PathBuf::from(dir).join(FILE_NAME), Origin::ConfigDir))
    } else {
        home_default()
    };
    let (path, origin) = found.ok_or(NoHomeError)?;
    Ok((absolute_lexically(&path), origin))
}

/// The Keychain item's service name, as Claude Code 2.1.332 derives it: `Claude
/// Code-credentials`, plus `-` and the first 8 hex digits of the SHA-256 of a directory path,
/// NFC-normalized: `CLAUDE_SECURESTORAGE_CONFIG_DIR` when set and non-empty, else
/// `CLAUDE_CONFIG_DIR` as given (not made absolute) when set; no suffix otherwise, nor when
/// `CLAUDE_SECURESTORAGE_CONFIG_DIR` is set but empty.
pub fn keychain_service(env: &LocateEnv) -> String {
    let dir = match &env.securestorage_dir {
        Some(d) if d.is_empty() => None,
        Some(d) => Some(d),
        None => env.config_dir.as_ref().filter(|d| !d.is_empty()),
    };
    match dir {
        None => KEYCHAIN_SERVICE.to_owned(),
        Some(dir) => format!("{KEYCHAIN_SERVICE}-{}", dir_hash(dir)),
    }
}

/// The first 8 hex digits of the SHA-256 of the NFC form of `dir` (Node strings are Unicode;
/// a path that is not UTF-8 is hashed from its lossy form, as Node would have decoded it).
fn dir_hash(dir: &OsString) -> String {
    let text = dir.to_string_lossy();
    let nfc = icu_normalizer::ComposingNormalizerBorrowed::new_nfc().normalize(&text);
    let digest = Sha256::digest(nfc.as_bytes());
    digest[..4].iter().map(|b| format!("{b:02x}")).collect()
}

/// The Keychain item's account: `$USER` when it is a plain name (`[A-Za-z0-9._-]+`), else
/// `claude-code-user`.
pub fn keychain_account(env: &LocateEnv) -> String {
    env.user
        .as_ref()
        .and_then(|u| u.to_str())
        .filter(|u| {
            !u.is_empty()
                && u.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        })
        .unwrap_or(FALLBACK_ACCOUNT)
        .to_owned()
}

/// `path` made absolute the way Node's `path.resolve` does it (which is how Claude Code makes
/// its config directory absolute): relative to the working directory, `.` and `..` collapsed
/// by name, symlinks not resolved. Without a working directory (it was deleted), the path is
/// returned as it is.
pub fn absolute_lexically(path: &Path) -> PathBuf {
    if path.is_absolute() {
        return absolute_from(Path::new("/"), path);
    }
    match std::env::current_dir() {
        Ok(cwd) => absolute_from(&cwd, path),
        Err(_) => path.to_path_buf(),
    }
}

/// [`absolute_lexically`] against a given working directory (absolute).
pub(super) fn absolute_from(cwd: &Path, path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::from("/");
    for part in cwd.components().chain(path.components()) {
        match part {
            Component::RootDir => out = PathBuf::from("/"),
            Component::CurDir | Component::Prefix(_) => {}
            // `pop` at the root leaves the root, as `/..` is `/`.
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(name) => out.push(name),
        }
    }
    out
}

/// Follows a chain of symlinks at the last path component to the file that holds the data.
/// Directories on the way are left as they are: a rename inside a symlinked directory is still
/// a rename inside one directory. The target need not exist yet.
pub fn resolve_symlinks(path: &Path) -> io::Result<PathBuf> {
    let mut current = path.to_path_buf();
    // The same bound as the kernel's ELOOP.
    for _ in 0..40 {
        match fs::symlink_metadata(&current) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let link = fs::read_link(&current)?;
                current = if link.is_absolute() {
                    link
                } else {
                    current.parent().unwrap_or(Path::new(".")).join(link)
                };
            }
            _ => return Ok(current),
        }
    }
    Err(io::Error::other(format!(
        "{}: too many levels of symbolic links",
        path.display()
    )))
}

/// Whether two paths reach one file, judged by what the system says rather than by spelling:
/// the file's device and inode when both exist; else (no login yet) the directory's device and
/// inode and the same file name; else, with nothing to ask, the paths themselves.
pub(super) fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let id = |p: &Path| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    if let (Some(x), Some(y)) = (id(a), id(b)) {
        return x == y;
    }
    match (a.parent().and_then(&id), b.parent().and_then(&id)) {
        (Some(x), Some(y)) => x == y && a.file_name() == b.file_name(),
        _ => a == b,
    }
}
