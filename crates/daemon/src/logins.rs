//! Which logins the settings name, and their stores (CONTRACT.md "Where the credentials live"
//! and "Several logins, one daemon"): the `--credentials`/`--config-dir` flags in order, else
//! `CLAUDE_TOKEND_CONFIG_DIRS`, else the one login located from the environment; `--store`
//! choosing the file or the Keychain item. Two names for one store are one login. Every
//! command starts here; this module imports nothing of the binary but `cli` and `exit`.

use tokend_core::store::{self, Keychain, LocateEnv, Store};

use crate::cli::{LoginFlag, Settings, StoreChoice};
use crate::exit;

/// Every login the settings name, in order (see CONTRACT.md "Several logins, one daemon"): the
/// `--credentials`/`--config-dir` flags when any is given; else the `:`-separated
/// CLAUDE_TOKEND_CONFIG_DIRS (see [`config_dirs_list`] for its `~`); else the one login
/// located as in "Where the credentials live".
/// Two entries naming the same store are one login. A bad combination exits 2.
pub fn stores_for(settings: &Settings) -> Result<Vec<Store>, u8> {
    logins_for(settings).map(|(stores, _)| stores)
}

/// [`stores_for`], and for each of `settings.login_flags` the index of its login in the list
/// (two flags naming one store share it): what pairs a `--mirror` with its login.
pub fn logins_for(settings: &Settings) -> Result<(Vec<Store>, Vec<usize>), u8> {
    let env = LocateEnv::from_process();
    let mut stores: Vec<Store> = Vec::new();
    if !settings.login_flags.is_empty() {
        for flag in &settings.login_flags {
            stores.push(match flag {
                LoginFlag::Credentials(path) => explicit_file(settings, path)?,
                LoginFlag::ConfigDir(dir) => config_dir_store(settings, &env, dir.as_os_str())?,
            });
        }
    } else if let Some(dirs) = dir_list_var("CLAUDE_TOKEND_CONFIG_DIRS")? {
        for dir in dirs {
            stores.push(config_dir_store(settings, &env, dir.as_os_str())?);
        }
    }
    if stores.is_empty() {
        stores.push(default_store(settings, &env)?);
    }
    let mut unique: Vec<Store> = Vec::new();
    let mut index_of = Vec::with_capacity(stores.len());
    for store in stores {
        match unique.iter().position(|s| s.same_store(&store)) {
            Some(i) => index_of.push(i),
            None => {
                index_of.push(unique.len());
                unique.push(store);
            }
        }
    }
    // Only the flags' logins are named by index (the list and the default are not flags).
    index_of.truncate(settings.login_flags.len());
    Ok((unique, index_of))
}

/// The directories of `CLAUDE_TOKEND_CONFIG_DIRS`: `:`-separated, like PATH, empty entries
/// skipped. A variable is often set with quotes (`export CLAUDE_TOKEND_CONFIG_DIRS="~/a:~/b"`),
/// where the shell leaves `~` alone, so a leading `~` or `~/` means `home`, as a shell would
/// have made it; `~user` (another user's home) is refused, saying why, rather than taken for a
/// directory named `~user`. The service install carries the list with the same reading.
pub fn config_dirs_list(
    list: &std::ffi::OsStr,
    home: Option<&std::ffi::OsStr>,
) -> Result<Vec<std::path::PathBuf>, String> {
    use std::os::unix::ffi::OsStrExt;
    let mut dirs = Vec::new();
    for dir in std::env::split_paths(list).filter(|d| !d.as_os_str().is_empty()) {
        let bytes = dir.as_os_str().as_bytes();
        if bytes.first() != Some(&b'~') {
            dirs.push(dir);
            continue;
        }
        let rest = &bytes[1..];
        if !rest.is_empty() && rest[0] != b'/' {
            let name_end = bytes.iter().position(|&b| b == b'/').unwrap_or(bytes.len());
            let user = String::from_utf8_lossy(&bytes[..name_end]);
            return Err(format!(
                "the entry `{}` starts with `{user}`, another user's home, which is not \
                 expanded here: write that directory's full path",
                dir.display()
            ));
        }
        let Some(home) = home.filter(|h| !h.is_empty()) else {
            return Err(format!(
                "the entry `{}` starts with `~`, but HOME is not set to expand it: write the \
                 full path",
                dir.display()
            ));
        };
        let mut expanded = std::path::PathBuf::from(home);
        let rest = std::ffi::OsStr::from_bytes(rest.strip_prefix(b"/").unwrap_or(rest));
        if !rest.is_empty() {
            expanded.push(rest);
        }
        dirs.push(expanded);
    }
    Ok(dirs)
}

/// The directories a `:`-separated variable lists (`CLAUDE_TOKEND_CONFIG_DIRS`,
/// `CLAUDE_TOKEND_MIRRORS`), read as [`config_dirs_list`] reads them; `None` when it is unset
/// or empty; exit 2 naming the variable when an entry cannot be read.
pub fn dir_list_var(name: &str) -> Result<Option<Vec<std::path::PathBuf>>, u8> {
    let Some(list) = std::env::var_os(name).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    config_dirs_list(&list, std::env::var_os("HOME").as_deref())
        .map(Some)
        .map_err(|why| {
            eprintln!("claude-tokend: {name}: {why}");
            exit::USAGE
        })
}

/// The one login a command that needs exactly one (`token`, `login`, `logout`) acts on.
pub fn one_store_for(settings: &Settings, command: &str) -> Result<Store, u8> {
    let mut stores = stores_for(settings)?;
    if stores.len() != 1 {
        eprintln!(
            "claude-tokend: {command} acts on exactly one login, and {} are configured \
             (--credentials, --config-dir or CLAUDE_TOKEND_CONFIG_DIRS): name one with \
             --config-dir DIR or --credentials PATH",
            stores.len()
        );
        return Err(exit::USAGE);
    }
    Ok(stores.remove(0))
}

/// `--credentials PATH`: a file, whatever `--store auto` would pick.
fn explicit_file(settings: &Settings, path: &std::path::Path) -> Result<Store, u8> {
    if settings.store == StoreChoice::Keychain {
        eprintln!(
            "claude-tokend: --credentials (or CLAUDE_TOKEND_CREDENTIALS) names a file, which \
             --store keychain does not use: drop one of them (--config-dir DIR chooses the \
             Keychain item of another config directory)"
        );
        return Err(exit::USAGE);
    }
    if path.as_os_str().is_empty() {
        eprintln!("claude-tokend: --credentials needs a path");
        return Err(exit::USAGE);
    }
    Ok(Store::new(store::absolute_lexically(path)))
}

/// `--config-dir DIR`: Claude Code's login as with `CLAUDE_CONFIG_DIR=DIR` (its own
/// `CLAUDE_SECURESTORAGE_CONFIG_DIR` does not apply).
fn config_dir_store(
    settings: &Settings,
    env: &LocateEnv,
    dir: &std::ffi::OsStr,
) -> Result<Store, u8> {
    if dir.is_empty() {
        eprintln!("claude-tokend: --config-dir needs a directory");
        return Err(exit::USAGE);
    }
    located(settings, &env.with_config_dir(dir.to_os_string()), None)
}

/// The one login located as in "Where the credentials live".
fn default_store(settings: &Settings, env: &LocateEnv) -> Result<Store, u8> {
    match &settings.credentials_env {
        Some(path) if !path.as_os_str().is_empty() => explicit_file(settings, path),
        _ => located(settings, env, None),
    }
}

/// The store of the login `env` locates, of the kind `--store` asks for.
fn located(
    settings: &Settings,
    env: &LocateEnv,
    explicit: Option<&std::path::Path>,
) -> Result<Store, u8> {
    let path = match store::locate(explicit, env) {
        Ok((path, _origin)) => path,
        Err(e) => {
            eprintln!("claude-tokend: {e}");
            return Err(exit::USAGE);
        }
    };
    let item = || Keychain {
        service: store::keychain_service(env),
        account: store::keychain_account(env),
    };
    Ok(match settings.store {
        StoreChoice::File => Store::new(path),
        StoreChoice::Keychain => Store::keychain(path, item()),
        StoreChoice::Auto => auto_store(path, item, explicit.is_some()),
    })
}

/// `--store auto`: where Claude Code itself keeps the login. On macOS that is the Keychain
/// item when it exists, else the file when it exists, else the Keychain (where a new login
/// goes; the daemon then waits for either); a Keychain that cannot be asked (locked) is a
/// Keychain failure, never a reason to use the file. Elsewhere, and for an explicit
/// `--credentials`, the file.
fn auto_store(path: std::path::PathBuf, item: impl FnOnce() -> Keychain, explicit: bool) -> Store {
    let macos = cfg!(target_os = "macos") || tokend_core::seams::auto_as_macos();
    if !macos || explicit {
        return Store::new(path);
    }
    let item = item();
    match item.exists() {
        Ok(false) if path.exists() => Store::new(path),
        Ok(false) => Store::keychain_or_file(path, item),
        _ => Store::keychain(path, item),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;
    use std::path::PathBuf;

    #[test]
    fn config_dirs_expand_a_leading_tilde_by_table() {
        let home = Some(OsStr::new("/home/u"));
        let ok = |list: &str, want: &[&str]| {
            assert_eq!(
                config_dirs_list(OsStr::new(list), home),
                Ok(want.iter().map(PathBuf::from).collect::<Vec<_>>()),
                "{list}"
            );
        };
        ok("~/a:~/b/", &["/home/u/a", "/home/u/b/"]);
        ok("~", &["/home/u"]);
        ok("~/", &["/home/u"]);
        ok("/srv/x::rel/y", &["/srv/x", "rel/y"]);
        ok("/srv/~/x:a~b", &["/srv/~/x", "a~b"]);
        for bad in ["~bob", "~bob/claude", "/a:~other/x"] {
            let err = config_dirs_list(OsStr::new(bad), home).unwrap_err();
            assert!(err.contains("another user's home"), "{bad}: {err}");
        }
        for home in [None, Some(OsStr::new(""))] {
            let err = config_dirs_list(OsStr::new("~/a"), home).unwrap_err();
            assert!(err.contains("HOME"), "{err}");
        }
    }
}
