//! Which access-only copies ("mirrors") each login has, and the one-shot commands' part in
//! keeping them: pairing `--mirror` flags (or `CLAUDE_TOKEND_MIRRORS`) with logins, the
//! refusals at start (exit 2: a mirror that would overwrite a real login, the same directory
//! twice), and bringing a login's mirrors up to date after `--once` or `refresh`. The daemon's
//! timing of the same writes is in `daemon/mirrors.rs`; what a write does is
//! `tokend_core::mirror`.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use tokend_core::mirror::{self, GONE_RECHECK, Mirror, Synced, UNPARSABLE_PAUSE, Want};
use tokend_core::store::{Store, StoreError};

use crate::cli::Settings;
use crate::exit;
use crate::interrupt;
use crate::logins::{dir_list_var, logins_for};
use crate::mirror_cmd;

/// The configured logins, and each one's mirrors (in the same order).
pub struct Configured {
    pub stores: Vec<Store>,
    pub mirrors: Vec<Vec<Mirror>>,
}

/// The logins and their mirrors, as the contract pairs them: a `--mirror` belongs to the
/// nearest `--config-dir`/`--credentials` before it (before any, to the only login);
/// `CLAUDE_TOKEND_MIRRORS` gives the mirrors of the only login; the flags replace the
/// variable. Exit 2, saying what to write instead, for a mirror no login can be found for, the
/// same directory twice, or a mirror that is a configured login's config directory or store.
pub fn configured(settings: &Settings) -> Result<Configured, u8> {
    let (stores, index_of) = logins_for(settings)?;
    let mut mirrors: Vec<Vec<Mirror>> = vec![Vec::new(); stores.len()];
    let mut seen: Vec<(PathBuf, String)> = Vec::new();
    let mut add = |login: usize, dir: &Path, named: String| -> Result<(), u8> {
        if dir.as_os_str().is_empty() {
            return Err(usage(format_args!("{named} needs a directory")));
        }
        let resolved = mirror::resolve(dir);
        if let Some((_, first)) = seen.iter().find(|(d, _)| same_dir(d, &resolved)) {
            return Err(usage(format_args!(
                "{named} and {first} are the same directory ({}); a mirror is kept once, for one \
                 login: drop one of them",
                resolved.display()
            )));
        }
        seen.push((resolved.clone(), named.clone()));
        mirrors[login].push(Mirror::new(resolved));
        Ok(())
    };
    if !settings.mirror_flags.is_empty() {
        for flag in &settings.mirror_flags {
            let named = format!("--mirror {}", flag.dir.display());
            let login = match flag.login {
                Some(f) => index_of[f],
                None if stores.len() == 1 => 0,
                None => {
                    return Err(usage(format_args!(
                        "{named} has no --config-dir or --credentials before it on the command \
                         line, and {} logins are configured, so it is not clear whose copy it \
                         is: put each --mirror after the --config-dir DIR or --credentials PATH \
                         of its login",
                        stores.len()
                    )));
                }
            };
            add(login, &flag.dir, named)?;
        }
    } else if let Some(dirs) = dir_list_var("CLAUDE_TOKEND_MIRRORS")? {
        if stores.len() != 1 && !dirs.is_empty() {
            return Err(usage(format_args!(
                "CLAUDE_TOKEND_MIRRORS gives the mirrors of a single login, and {} logins are \
                 configured: give each login its mirrors with --mirror DIR after its \
                 --config-dir DIR or --credentials PATH",
                stores.len()
            )));
        }
        for dir in dirs {
            let named = format!("CLAUDE_TOKEND_MIRRORS entry {}", dir.display());
            add(0, &dir, named)?;
        }
    }
    for m in mirrors.iter().flatten() {
        for login in &stores {
            refuse_if_login_place(m, login)?;
        }
    }
    Ok(Configured { stores, mirrors })
}

/// Exit 2 when the mirror's directory is a configured login's config directory, or its file
/// is that login's store: a mirror never overwrites a real login.
fn refuse_if_login_place(m: &Mirror, login: &Store) -> Result<(), u8> {
    let config_dir = login.path().parent().map(mirror::resolve);
    if config_dir.as_deref().is_some_and(|d| same_dir(d, m.dir())) {
        return Err(usage(format_args!(
            "the mirror {}: that is the config directory of the login in {}, and a mirror \
             there would overwrite it: choose a directory of its own (like ~/.claude-mirror)",
            m.dir().display(),
            login.place()
        )));
    }
    let target = login.target();
    let store_dir = target.parent().map(mirror::resolve);
    if target.file_name() == Some(std::ffi::OsStr::new(mirror::FILE_NAME))
        && store_dir.as_deref().is_some_and(|d| same_dir(d, m.dir()))
    {
        return Err(usage(format_args!(
            "the mirror {}: its {} is where the login in {} is kept, and a mirror never \
             overwrites a real login: choose a directory of its own",
            m.dir().display(),
            mirror::FILE_NAME,
            login.place()
        )));
    }
    Ok(())
}

/// Exit 2 when a mirror file holds someone's real login (a refresh token): for the commands
/// that write mirrors, at start.
pub fn refuse_real_logins(configured: &Configured) -> Result<(), u8> {
    for m in configured.mirrors.iter().flatten() {
        if std::fs::symlink_metadata(m.dir()).is_ok_and(|md| md.file_type().is_symlink()) {
            eprintln!(
                "claude-tokend: warning: the mirror {} is a symlink, and a mirror is never \
                 written through a link: it stays unwritten until it is a directory (give \
                 --mirror the directory the link points at)",
                m.dir().display()
            );
        }
        if m.holds_real_login() {
            return Err(usage(format_args!(
                "the mirror {}: {} holds a login with a refresh token (a real login: Claude \
                 Code's own there, or a consumer that signed in inside the mirror), which a \
                 mirror never overwrites. If it is a login you use, give the mirror another \
                 directory; if it is a consumer's sign-in that should not be there, move the \
                 file away (mv {} {}.moved) and start again",
                m.dir().display(),
                m.file().display(),
                m.file().display(),
                m.file().display()
            )));
        }
    }
    Ok(())
}

/// Two directories are one when the system says so (device and inode), or, when either does
/// not exist yet, when their resolved paths are equal.
fn same_dir(a: &Path, b: &Path) -> bool {
    let id = |p: &Path| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    match (id(a), id(b)) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

fn usage(message: std::fmt::Arguments<'_>) -> u8 {
    eprintln!("claude-tokend: {message}");
    exit::USAGE
}

/// A `--mirror-cmd` run a one-shot command owes a login: run after every login's refresh
/// (so one slow command delays no other login's), by [`run_commands`].
pub struct Owed {
    login: String,
    want: Want,
}

/// After `--once` or `refresh` ran for a login (and saved what it got): brings each of its
/// mirrors up to date (refreshed or not). When `refreshed` and `--mirror-cmd` is set, the run
/// it owes. A failure is a warning on stderr; it never changes the exit code.
pub fn after_one_shot(
    settings: &Settings,
    store: &Store,
    mirrors: &[Mirror],
    refreshed: bool,
) -> Option<Owed> {
    let command = refreshed && settings.mirror_cmd.is_some();
    if mirrors.is_empty() && !command {
        return None;
    }
    let mut read = store.read();
    if matches!(read, Err(StoreError::Missing { .. })) {
        // As the daemon does: a file moved away and back for a moment (an editor's save) is
        // not a logout for the mirrors.
        std::thread::sleep(GONE_RECHECK);
        read = store.read();
    }
    let Some(want) = mirror::want_of_read(&read) else {
        if !mirrors.is_empty() {
            interrupt::tell(format_args!(
                "warning: {} could not be read after the run, so its mirrors were left as they are",
                store.place()
            ));
        }
        return None;
    };
    for m in mirrors {
        sync_one_shot(m, &want);
    }
    command.then(|| Owed {
        login: crate::show::login_id(store),
        want,
    })
}

/// Runs the `--mirror-cmd` runs owed, one after the other, each waited for up to its limit
/// unless `stop` (a signal came) says to stop waiting: the command then goes on by itself.
/// The `--mirror-cmd` setting, with the name it was given by.
pub fn command_of(settings: &Settings) -> Option<mirror_cmd::MirrorCmd> {
    Some(mirror_cmd::MirrorCmd {
        command: settings.mirror_cmd.clone()?,
        named: settings.origin("mirror_cmd").name().to_owned(),
    })
}

/// A failure is a warning on stderr (a one-shot command does not retry it: the next run that
/// refreshes runs it again).
pub fn run_commands(settings: &Settings, owed: Vec<Owed>, stop: &mut dyn FnMut() -> bool) {
    let Some(command) = command_of(settings) else {
        return;
    };
    for o in owed {
        if stop() {
            return;
        }
        if let Err(why) = mirror_cmd::run(&command.command, &o.login, &o.want, stop) {
            interrupt::tell(format_args!(
                "warning: {} for {}: {why}",
                command.named, o.login
            ));
        }
    }
}

/// One mirror, from a one-shot command: an unparsable file gets its second look after
/// [`UNPARSABLE_PAUSE`].
fn sync_one_shot(m: &Mirror, want: &Want) {
    let mut result = m.sync(want, false);
    if matches!(result, Ok(Synced::Unparsable)) {
        std::thread::sleep(UNPARSABLE_PAUSE);
        result = m.sync(want, true);
    }
    if matches!(result, Ok(Synced::Raced)) {
        // Its consumer wrote it meanwhile: one more look, at what it wrote.
        result = m.sync(want, false);
    }
    match result {
        Ok(Synced::Written {
            replaced: Some(what),
        }) => tracing::info!(
            "mirror {}: replaced {what} at {} with the access-only copy",
            m.dir().display(),
            mirror::FILE_NAME
        ),
        Ok(Synced::Written { replaced: None }) => {
            tracing::info!("mirror {}: written", m.dir().display())
        }
        Ok(Synced::Unchanged | Synced::Unparsable) => {}
        Ok(Synced::Raced) => interrupt::tell(format_args!(
            "warning: mirror {}: its consumer kept writing {} while it was being updated; the \
             next run tries again",
            m.dir().display(),
            mirror::FILE_NAME
        )),
        Ok(Synced::HoldsRefreshToken) => {
            interrupt::tell(format_args!("warning: {}", m.holds_refresh_token_text()))
        }
        Err(e) => interrupt::tell(format_args!("warning: {e}")),
    }
}
