//! What store failures are and how they read: [`StoreError`], every variant naming the
//! [`Place`] it concerns (a file path or a Keychain item) and none carrying its content.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use crate::credentials::ParseError;

/// The store a message names: a file path, or a Keychain item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Place {
    File(PathBuf),
    Item { service: String, account: String },
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Place::File(path) => write!(f, "{}", path.display()),
            Place::Item { service, account } => {
                write!(f, "the Keychain item \"{service}\" (account \"{account}\")")
            }
        }
    }
}

/// What went wrong with the store. Every variant names the place; none carries its content.
#[derive(Debug)]
pub enum StoreError {
    Missing {
        place: Place,
    },
    Unreadable {
        place: Place,
        source: io::Error,
    },
    Malformed {
        place: Place,
        reason: ParseError,
    },
    /// `security` could not read or write the item: the keychain is locked (`locked`), or it
    /// failed in a way that may pass. Transient: never a reason to think the user logged out.
    KeychainUnavailable {
        place: Place,
        locked: bool,
        detail: String,
    },
    Lock {
        path: PathBuf,
        source: io::Error,
    },
    LockTimeout {
        path: PathBuf,
        waited: Duration,
    },
    Write {
        path: PathBuf,
        stage: &'static str,
        source: io::Error,
    },
    /// The document, with room for new tokens, is too big to be written the way this store
    /// writes it (a Keychain item past what `security` can be given as arguments); it stays so
    /// until the document shrinks. `size` and `limit` are bytes of JSON. `checked`: found by the
    /// check before a request (so nothing was spent), not by a write that failed.
    TooBig {
        place: Place,
        size: usize,
        limit: usize,
        checked: bool,
    },
}

impl StoreError {
    /// A parse failure that may only mean a writer is half-way through the file.
    pub fn may_be_mid_write(&self) -> bool {
        matches!(
            self,
            StoreError::Malformed {
                reason: ParseError::Syntax(_),
                ..
            }
        )
    }

    /// Whether the failure is the Keychain's (its advice is not the file's: no disk space to
    /// free, no permissions to fix).
    pub fn concerns_keychain(&self) -> bool {
        match self {
            StoreError::KeychainUnavailable { .. } | StoreError::TooBig { .. } => true,
            StoreError::Missing { place }
            | StoreError::Unreadable { place, .. }
            | StoreError::Malformed { place, .. } => matches!(place, Place::Item { .. }),
            StoreError::Lock { .. } | StoreError::LockTimeout { .. } | StoreError::Write { .. } => {
                false
            }
        }
    }

    /// A failure worth retrying with backoff (a locked or busy keychain).
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::KeychainUnavailable { .. })
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Missing {
                place: Place::File(path),
            } => write!(
                f,
                "no credentials file at {}: sign in first (`claude-tokend login`, or Claude \
                 Code's /login), or point --credentials or CLAUDE_CONFIG_DIR at the file",
                path.display()
            ),
            StoreError::Missing { place } => write!(
                f,
                "no login in the Keychain: {place} does not exist; sign in with Claude Code \
                 (or `claude-tokend login`) first, or choose the store with --store"
            ),
            StoreError::Unreadable { place, source } => {
                write!(f, "cannot read {place}: {source}")
            }
            StoreError::Malformed { place, reason } => write!(
                f,
                "{place} is not a usable credentials document: {reason}; it was left untouched"
            ),
            StoreError::KeychainUnavailable {
                place,
                locked: true,
                ..
            } => write!(
                f,
                "the login keychain is locked, so {place} cannot be used: unlock it with \
                 `security unlock-keychain` (over SSH, run that in the SSH session)"
            ),
            StoreError::KeychainUnavailable { detail, .. } => {
                write!(f, "{detail}; the Keychain may be busy, try again")
            }
            StoreError::Lock { path, source } => {
                write!(f, "cannot take the lock {}: {source}", path.display())
            }
            StoreError::LockTimeout { path, waited } => write!(
                f,
                "another process held the lock {} for {}s; try again later",
                path.display(),
                waited.as_secs()
            ),
            StoreError::Write {
                path,
                stage,
                source,
            } => write!(f, "cannot write {} ({stage}): {source}", path.display()),
            StoreError::TooBig {
                place,
                size,
                limit,
                checked,
            } => write!(
                f,
                "{place} holds {size} bytes, but `security` can be given at most about {limit} \
                 here (with room left for new tokens), so it cannot be written back{}. Make the \
                 item smaller by removing the tokens of MCP servers you no longer use (the \
                 entries under `mcpOAuth`), or keep this login in a file instead (--store file)",
                match checked {
                    true => ": nothing was sent, and the refresh token is unspent",
                    false => "",
                }
            ),
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StoreError::Unreadable { source, .. }
            | StoreError::Lock { source, .. }
            | StoreError::Write { source, .. } => Some(source),
            StoreError::Malformed { reason, .. } => Some(reason),
            _ => None,
        }
    }
}
