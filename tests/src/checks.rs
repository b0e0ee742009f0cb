//! What a killed or finished run left behind: Claude Code's lock directories, temp files and
//! other stray names in the home ([`leftovers`]), and which token pair the credentials file
//! holds ([`which_pair`]). Only looks; never writes, runs or serves anything.

use std::fs;
use std::path::PathBuf;

use serde_json::Value;

use crate::home::{Login, TempHome, allowed_siblings, list_names};
use crate::server::Issued;

/// Claude Code's three lock directories for the default config directory `HOME/.claude`:
/// `.claude/.oauth_refresh.lock`, `HOME/.claude.lock` and `.claude/.storage-write.lock`.
pub fn claude_lock_dirs(home: &TempHome) -> [PathBuf; 3] {
    [
        home.claude_dir().join(".oauth_refresh.lock"),
        home.path().join(".claude.lock"),
        home.claude_dir().join(".storage-write.lock"),
    ]
}

/// The names of the lock directories of [`claude_lock_dirs`] that exist.
pub fn lock_dirs_present(home: &TempHome) -> Vec<String> {
    claude_lock_dirs(home)
        .iter()
        .filter(|p| fs::symlink_metadata(p).is_ok())
        .map(|p| {
            p.file_name()
                .expect("a lock directory has a name")
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

/// Temp files beside the credentials file (`.credentials.json.tmp.*`, whatever the exact
/// prefix): names in `HOME/.claude` containing `.credentials.json.tmp.`.
pub fn temp_files(home: &TempHome) -> Vec<PathBuf> {
    list_names(&home.claude_dir())
        .into_iter()
        .filter(|n| n.contains(".credentials.json.tmp."))
        .map(|n| home.claude_dir().join(n))
        .collect()
}

/// Everything a finished run must not leave behind: any name in `HOME/.claude` other than the
/// file and its permanent flock sibling (temp files, a `.bak`, lock directories), and
/// `HOME/.claude.lock`.
pub fn leftovers(home: &TempHome) -> Vec<String> {
    let allowed = allowed_siblings(".credentials.json");
    let mut stray: Vec<String> = list_names(&home.claude_dir())
        .into_iter()
        .filter(|n| !allowed.contains(n))
        .collect();
    if fs::symlink_metadata(home.path().join(".claude.lock")).is_ok() {
        stray.push("../.claude.lock".into());
    }
    stray
}

/// Which token pair a credentials document holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pair {
    /// The pair of the login the test started from.
    Old,
    /// The pair the server issued `n`-th (index into
    /// [`TokenServer::issued`](crate::TokenServer::issued)).
    Issued(usize),
}

/// Classifies the `accessToken`/`refreshToken` pair of `doc`: the old login's, or one pair the
/// server issued (both tokens from the same answer). A mix, or tokens nobody issued, is an
/// error describing what was found.
pub fn which_pair(doc: &Value, old: &Login, issued: &[Issued]) -> Result<Pair, String> {
    let o = doc
        .get("claudeAiOauth")
        .and_then(Value::as_object)
        .ok_or_else(|| "no claudeAiOauth object".to_owned())?;
    let access = o.get("accessToken").and_then(Value::as_str).unwrap_or("");
    let refresh = o.get("refreshToken").and_then(Value::as_str).unwrap_or("");
    if access == old.access && refresh == old.refresh {
        return Ok(Pair::Old);
    }
    // Search from the newest: the same token is never issued twice.
    for (i, p) in issued.iter().enumerate().rev() {
        if p.access == access && p.refresh.as_deref().is_none_or(|r| r == refresh) {
            return Ok(Pair::Issued(i));
        }
    }
    let short = |t: &str| format!("{}…", &t[..t.len().min(20)]);
    let from = |t: &str| {
        if t == old.access || t == old.refresh {
            "the old login".to_owned()
        } else if let Some(i) = issued
            .iter()
            .position(|p| p.access == t || p.refresh.as_deref() == Some(t))
        {
            format!("issued pair #{i}")
        } else {
            "nobody".to_owned()
        }
    };
    Err(format!(
        "a mixed or unknown token pair: accessToken {} (from {}), refreshToken {} (from {})",
        short(access),
        from(access),
        short(refresh),
        from(refresh)
    ))
}
