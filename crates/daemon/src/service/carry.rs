//! What the service must be told to do what this command line would do: the settings that
//! differ from their defaults (as environment variables), the logins, and, for the sandbox
//! drop-in, the directories the daemon writes in (the program's path is `program`'s). It
//! reads the environment and follows symlinks of the credentials file; it writes nothing.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokend_core::settings::parse_endpoint_url;
use tokend_core::store;

use super::home::{normalize, parent};
use super::render::{check_value, utf8};
use crate::cli::{
    DEFAULT_CLIENT_ID, DEFAULT_TOKEN_URL, DEFAULT_USER_AGENT, LoginFlag, NotifyChoice, Settings,
    StoreChoice,
};
use crate::exit;
use crate::logins::dir_list_var;

/// What `--refresh-before` defaults to in `cli.rs`; a unit test keeps the two in step.
const DEFAULT_REFRESH_BEFORE: Duration = Duration::from_secs(15 * 60);

/// The settings the service must see to do what this command line would do: the credentials
/// location (made absolute: the service does not run in this directory), and every setting the
/// daemon uses that differs from its default. Defaults are left out, so a later release's new
/// default reaches the service.
pub(super) fn carried_settings(settings: &Settings) -> Result<Vec<(&'static str, String)>, u8> {
    let mut env = Vec::new();
    // The logins, made absolute: as variables when variables can say it (one file, or config
    // directories), else on the command line (see `carried_logins`).
    match carried_as(settings)? {
        Carried::Args => {}
        Carried::File(path) => env.push(("CLAUDE_TOKEND_CREDENTIALS", path)),
        Carried::Dirs(dirs) => env.push(("CLAUDE_TOKEND_CONFIG_DIRS", dirs.join(":"))),
        Carried::Unnamed => {}
    }
    if settings.login_flags.is_empty() {
        if let Some(path) = settings
            .credentials_env
            .as_deref()
            .filter(|p| !p.as_os_str().is_empty())
        {
            env.push(("CLAUDE_TOKEND_CREDENTIALS", absolute_utf8(path)?));
        }
        if let Some(list) = dir_list_var("CLAUDE_TOKEND_CONFIG_DIRS")? {
            let mut dirs = Vec::new();
            for dir in list {
                dirs.push(absolute_utf8(&dir)?);
            }
            env.push(("CLAUDE_TOKEND_CONFIG_DIRS", dirs.join(":")));
        }
    }
    if let Some(dir) = std::env::var_os("CLAUDE_CONFIG_DIR").filter(|d| !d.is_empty()) {
        env.push(("CLAUDE_CONFIG_DIR", absolute_utf8(Path::new(&dir))?));
    }
    // Claude Code's own (undocumented) variable moves the file, its locks and the Keychain
    // item's name; set but empty has a meaning too (the home default, no suffix).
    if let Some(dir) = std::env::var_os("CLAUDE_SECURESTORAGE_CONFIG_DIR") {
        let value = if dir.is_empty() {
            String::new()
        } else {
            absolute_utf8(Path::new(&dir))?
        };
        env.push(("CLAUDE_SECURESTORAGE_CONFIG_DIR", value));
    }
    if settings.store != StoreChoice::Auto {
        env.push((
            "CLAUDE_TOKEND_STORE",
            match settings.store {
                StoreChoice::Auto => "auto",
                StoreChoice::File => "file",
                StoreChoice::Keychain => "keychain",
            }
            .to_owned(),
        ));
    }
    let default_url =
        parse_endpoint_url(DEFAULT_TOKEN_URL).expect("the default token URL is valid");
    if settings.token_url != default_url {
        env.push(("CLAUDE_TOKEND_TOKEN_URL", settings.token_url.to_string()));
    }
    if settings.client_id != DEFAULT_CLIENT_ID {
        env.push(("ANTHROPIC_CLIENT_ID", settings.client_id.clone()));
    }
    if settings.refresh_before != DEFAULT_REFRESH_BEFORE {
        env.push((
            "CLAUDE_TOKEND_REFRESH_BEFORE",
            duration_setting(settings.refresh_before),
        ));
    }
    if let Some(cmd) = &settings.notify_cmd {
        env.push(("CLAUDE_TOKEND_NOTIFY_CMD", cmd.clone()));
    }
    // Mirrors named by flags go on the command line beside their logins (`carried_logins`);
    // the variable's, which belong to the only login, stay a variable (made absolute).
    if settings.mirror_flags.is_empty()
        && let Some(list) = dir_list_var("CLAUDE_TOKEND_MIRRORS")?
    {
        let mut dirs = Vec::new();
        for dir in list {
            let dir = absolute_utf8(&dir)?;
            if dir.contains(':') {
                tell!(
                    "claude-tokend: CLAUDE_TOKEND_MIRRORS: the directory {dir} has a `:` in it, \
                     which the list cannot carry: name it with --mirror instead"
                );
                return Err(exit::USAGE);
            }
            dirs.push(dir);
        }
        env.push(("CLAUDE_TOKEND_MIRRORS", dirs.join(":")));
    }
    if let Some(cmd) = &settings.mirror_cmd {
        env.push(("CLAUDE_TOKEND_MIRROR_CMD", cmd.clone()));
    }
    if settings.notify == Some(NotifyChoice::Desktop) {
        env.push(("CLAUDE_TOKEND_NOTIFY", "desktop".to_owned()));
    }
    if settings.user_agent != DEFAULT_USER_AGENT {
        env.push(("CLAUDE_TOKEND_USER_AGENT", settings.user_agent.clone()));
    }
    for (k, v) in &env {
        check_value(k, v)?;
    }
    Ok(env)
}

/// How the logins named by flags reach the service.
enum Carried {
    /// None was named: the variables that choose them are carried as they are.
    Unnamed,
    /// One `--credentials`: `CLAUDE_TOKEND_CREDENTIALS`.
    File(String),
    /// Only `--config-dir`s: `CLAUDE_TOKEND_CONFIG_DIRS` (none holds a `:`).
    Dirs(Vec<String>),
    /// Anything else, and every login when a `--mirror` is named (a mirror belongs to the login
    /// flag before it): `--credentials`/`--config-dir`/`--mirror` arguments on the service's
    /// command line.
    Args,
}

fn carried_as(settings: &Settings) -> Result<Carried, u8> {
    if !settings.mirror_flags.is_empty() {
        return Ok(Carried::Args);
    }
    match settings.login_flags.as_slice() {
        [] => Ok(Carried::Unnamed),
        [LoginFlag::Credentials(path)] => Ok(Carried::File(absolute_utf8(path)?)),
        flags => {
            let mut dirs = Vec::new();
            for flag in flags {
                match flag {
                    LoginFlag::ConfigDir(dir) => {
                        let dir = absolute_utf8(dir)?;
                        if dir.contains(':') {
                            return Ok(Carried::Args);
                        }
                        dirs.push(dir);
                    }
                    LoginFlag::Credentials(_) => return Ok(Carried::Args),
                }
            }
            Ok(Carried::Dirs(dirs))
        }
    }
}

/// The logins named by `--credentials` and `--config-dir`, in order, as arguments for the
/// service's command line (made absolute: the service does not run in this directory), when
/// variables cannot carry them (see [`Carried`]); empty otherwise.
pub(super) fn carried_logins(settings: &Settings) -> Result<Vec<String>, u8> {
    let mut args = Vec::new();
    if !matches!(carried_as(settings)?, Carried::Args) {
        return Ok(args);
    }
    // Each mirror right after its login, as it was paired here; one before every login flag
    // belongs to the only login, and stays first.
    let mirrors_of = |login: Option<usize>, args: &mut Vec<String>| -> Result<(), u8> {
        for m in settings.mirror_flags.iter().filter(|m| m.login == login) {
            args.push("--mirror".to_owned());
            args.push(absolute_utf8(&m.dir)?);
        }
        Ok(())
    };
    mirrors_of(None, &mut args)?;
    for (i, flag) in settings.login_flags.iter().enumerate() {
        let (name, path) = match flag {
            LoginFlag::Credentials(p) => ("--credentials", p),
            LoginFlag::ConfigDir(p) => ("--config-dir", p),
        };
        args.push(name.to_owned());
        args.push(absolute_utf8(path)?);
        mirrors_of(Some(i), &mut args)?;
    }
    Ok(args)
}

/// A duration as `parse_duration` reads it back exactly, in the largest unit that divides it.
fn duration_setting(d: Duration) -> String {
    let secs = d.as_secs();
    match (d.subsec_nanos(), secs) {
        (0, s) if s > 0 && s % 3600 == 0 => format!("{}h", s / 3600),
        (0, s) if s > 0 && s % 60 == 0 => format!("{}m", s / 60),
        (0, s) => format!("{s}s"),
        _ => format!("{}ms", d.as_millis()),
    }
}

fn absolute_utf8(path: &Path) -> Result<String, u8> {
    let abs = std::path::absolute(path).map_err(|e| {
        tell!(
            "claude-tokend: cannot make {} absolute: {e}",
            path.display()
        );
        exit::USAGE
    })?;
    utf8(&abs)
}

/// The directories the daemon writes in, for the sandbox's `ReadWritePaths=`: the credentials
/// file's directory (temp files, `.credentials.json.lock`), the directory that holds it
/// (Claude Code's lock directory `<config dir>.lock` is made there), and, for a symlinked file,
/// the directory of the file it points at; and each mirror directory (its parent while it
/// does not exist: the daemon creates it there). A directory inside another on the list is
/// dropped.
pub(super) fn writable_dirs(settings: &Settings) -> Result<Vec<String>, u8> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    let logins = crate::mirrors::configured(settings)?;
    for m in logins.mirrors.iter().flatten() {
        dirs.push(match m.dir().is_dir() {
            true => m.dir().to_path_buf(),
            false => parent(m.dir()),
        });
    }
    for store in logins.stores {
        let path = PathBuf::from(absolute_utf8(store.path())?);
        let config_dir = parent(&path);
        dirs.push(parent(&config_dir));
        dirs.push(config_dir);
        if let Ok(target) = store::resolve_symlinks(&path)
            && target != path
        {
            dirs.push(parent(&PathBuf::from(absolute_utf8(&target)?)));
        }
    }
    let dirs: Vec<PathBuf> = dirs.iter().map(|d| normalize(d)).collect();
    let mut kept: Vec<String> = Vec::new();
    for (i, d) in dirs.iter().enumerate() {
        let covered = dirs
            .iter()
            .enumerate()
            .any(|(j, other)| j != i && d.starts_with(other) && (d != other || j < i));
        if !covered {
            let s = utf8(d)?;
            check_value("a directory the daemon writes in", &s)?;
            kept.push(s);
        }
    }
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn default_refresh_before_matches_the_cli() {
        let cmd = crate::cli::Cli::command();
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_id() == "refresh_before")
            .expect("--refresh-before");
        let default = arg.get_default_values()[0].to_str().unwrap();
        assert_eq!(
            tokend_core::settings::parse_duration(default).unwrap(),
            DEFAULT_REFRESH_BEFORE
        );
    }

    #[test]
    fn durations_read_back_exactly() {
        for d in [1, 59, 60, 90, 900, 3600, 5400, 86_400] {
            let d = Duration::from_secs(d);
            let text = duration_setting(d);
            assert_eq!(
                tokend_core::settings::parse_duration(&text),
                Ok(d),
                "{text}"
            );
        }
        assert_eq!(duration_setting(Duration::from_secs(1200)), "20m");
        assert_eq!(duration_setting(Duration::from_millis(1500)), "1500ms");
    }
}
