//! The one-shot commands (`--once`, `refresh`) and the glue every command shares: which logins
//! the settings name (and their stores), the policy, the tokio runtime and signal handlers
//! (only when a request may be needed: see `interrupt`), and the mapping from outcomes to
//! messages and exit codes.

use std::time::SystemTime;

use tokend_core::credentials::OAuthView;
use tokend_core::oauth::ClientConfig;
use tokend_core::refresh::{self, Floor, Mode, Outcome, Policy, RefreshError, Retry, RunControl};
use tokend_core::schedule::{epoch_millis, is_due};
use tokend_core::store::{self, Keychain, LocateEnv, Store, StoreError};

use crate::cli::{DEFAULT_CLIENT_ID, LoginFlag, Settings, StoreChoice};
use crate::exit;
use crate::interrupt::{self, Ran, Session};
use crate::mirrors::{self, Configured};
use crate::show::{describe_expiry, emit};

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
    let list = std::env::var_os("CLAUDE_TOKEND_CONFIG_DIRS").filter(|v| !v.is_empty());
    if !settings.login_flags.is_empty() {
        for flag in &settings.login_flags {
            stores.push(match flag {
                LoginFlag::Credentials(path) => explicit_file(settings, path)?,
                LoginFlag::ConfigDir(dir) => config_dir_store(settings, &env, dir.as_os_str())?,
            });
        }
    } else if let Some(list) = list {
        for dir in config_dirs_list(&list, std::env::var_os("HOME").as_deref()).map_err(|why| {
            eprintln!("claude-tokend: CLAUDE_TOKEND_CONFIG_DIRS: {why}");
            exit::USAGE
        })? {
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

pub fn policy_for(settings: &Settings) -> Policy {
    // Where the client id came from, for a message when the server refuses it. The flag and the
    // variable carry the same value when both are set, so the variable is named only when it
    // is the one that set it.
    let from_env = std::env::var("ANTHROPIC_CLIENT_ID")
        .is_ok_and(|v| !v.trim().is_empty() && v.trim() == settings.client_id);
    let client_id_origin = if from_env {
        "ANTHROPIC_CLIENT_ID"
    } else if settings.client_id == DEFAULT_CLIENT_ID {
        "the built-in default of --client-id"
    } else {
        "the --client-id setting"
    };
    Policy {
        lead: settings.refresh_before,
        client_id: settings.client_id.clone(),
        client_id_origin: client_id_origin.to_owned(),
        client: ClientConfig {
            token_url: settings.token_url.clone(),
            user_agent: settings.user_agent.clone(),
        },
        // The daemon keeps its own backoff, and `refresh` is asked for now: `token` and
        // `--once` turn it on.
        honour_pause: false,
    }
}

/// A current-thread runtime: one thread is all a refresher needs, and it is built only when a
/// request may be made, so `--once` on a fresh token never pays for it.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime needs no resources that can run out")
}

/// The exit code a refresh failure means to a script.
pub fn exit_code(e: &RefreshError) -> u8 {
    match e {
        RefreshError::Store(
            StoreError::Missing { .. }
            | StoreError::Unreadable { .. }
            | StoreError::Malformed { .. }
            | StoreError::TooBig { .. },
        ) => exit::CONFIG,
        RefreshError::Store(
            StoreError::LockTimeout { .. } | StoreError::KeychainUnavailable { .. },
        )
        | RefreshError::Transient { .. }
        | RefreshError::SpentElsewhere { .. }
        | RefreshError::Paused { .. } => exit::TEMPFAIL,
        RefreshError::LoginNeeded { .. } | RefreshError::Rejected { .. } => exit::LOGIN_NEEDED,
        RefreshError::Store(StoreError::Lock { .. } | StoreError::Write { .. })
        | RefreshError::SaveFailed { .. }
        | RefreshError::ClientRefused { .. }
        | RefreshError::Endpoint { .. } => exit::FAILURE,
    }
}

pub fn report(e: &RefreshError) -> u8 {
    interrupt::tell(format_args!("{e}"));
    exit_code(e)
}

/// The worst of several logins' exit codes, in the contract's order 78 > 77 > 75 > 1 > 0.
pub fn worst(codes: impl IntoIterator<Item = u8>) -> u8 {
    let rank = |c: u8| match c {
        exit::CONFIG => 5,
        exit::LOGIN_NEEDED => 4,
        exit::TEMPFAIL => 3,
        exit::FAILURE => 2,
        exit::OK => 0,
        _ => 1,
    };
    codes
        .into_iter()
        .max_by_key(|c| rank(*c))
        .unwrap_or(exit::OK)
}

/// `--once`: refresh each login only if due. Silent on success.
pub fn once(settings: &Settings) -> u8 {
    interrupt::ignore_user_signals();
    let logins = match writing_mirrors(settings) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let mut session = None;
    let mut codes = Vec::with_capacity(logins.stores.len());
    for (store, mirrors) in logins.stores.iter().zip(&logins.mirrors) {
        match once_one(settings, store, &mut session) {
            Ok((code, refreshed)) => {
                codes.push(code);
                mirrors::after_one_shot(settings, store, mirrors, refreshed);
            }
            Err(code) => return code,
        }
    }
    match session.as_mut().and_then(Session::pending) {
        Some(signal) => interrupt::exit_code(signal),
        None => worst(codes),
    }
}

/// The logins and their mirrors, for a command that writes mirrors (the daemon, `--once`,
/// `refresh`): exit 2 for a mirror that holds someone's real login, too.
pub fn writing_mirrors(settings: &Settings) -> Result<Configured, u8> {
    let configured = mirrors::configured(settings)?;
    mirrors::refuse_real_logins(&configured)?;
    Ok(configured)
}

/// One login of `--once`: `Ok((code, whether it obtained new tokens))`, or `Err(code)` when a
/// signal stopped the command.
fn once_one(
    settings: &Settings,
    store: &Store,
    session: &mut Option<Session>,
) -> Result<(u8, bool), u8> {
    // The fast path: a fresh token is decided from one unlocked read, with no runtime, no HTTP
    // client, no lock and no signal handler. Anything else (due, missing, blank, odd) takes
    // the full path, which reads again under the lock before deciding anything.
    if let Ok(snapshot) = store.read()
        && let Ok(Some(view)) = snapshot.doc.oauth()
        && !view.access_token.is_blank()
        && !is_due(
            epoch_millis(SystemTime::now()),
            view.expires_at,
            settings.refresh_before,
        )
    {
        // Still tidy up after a run that crashed after writing (its lock directories would
        // make Claude Code wait): only if the lock is free right now, never waiting for it.
        if let Ok(Some(lock)) = store.try_lock() {
            refresh::tidy(store, &lock);
        }
        tracing::info!(
            "token is fresh; nothing to do; {}",
            describe_expiry(view.expires_at)
        );
        return Ok((exit::OK, false));
    }
    // A pause after another run's transient failure is honoured while the stored token still
    // lasts: the server asked to wait, and a valid token is stored (see below).
    let policy = Policy {
        honour_pause: true,
        ..policy_for(settings)
    };
    let session = started(session)?;
    let result = refresh_interruptibly(
        session,
        store,
        &policy,
        Mode::IfDue,
        settings.retry_budget,
        Retry::WithinBudget,
    )?;
    Ok(match result {
        Ok(outcome) => {
            warn_malformed_copy(&outcome);
            tracing::info!("{}", describe_outcome(&outcome));
            let refreshed = matches!(outcome, Outcome::Refreshed { .. });
            (valid_after(store, &outcome), refreshed)
        }
        // Nothing was sent, and the stored token lasts more than a minute (a pause never holds
        // otherwise): a valid token is stored and no refresh of this run failed, so 0, and
        // silent like every success of `--once`; the next run tries again.
        Err(e @ RefreshError::Paused { .. }) => {
            tracing::info!("{e}");
            (exit::OK, false)
        }
        Err(e) => (report(&e), false),
    })
}

/// The session of a command at its first login that may take locks (the runtime and the
/// signal handlers), or `Err(code)` when a signal came since its last run.
pub fn started(session: &mut Option<Session>) -> Result<&mut Session, u8> {
    match session {
        Some(s) => match s.pending() {
            Some(signal) => Err(interrupt::exit_code(signal)),
            None => Ok(s),
        },
        None => Ok(session.insert(Session::start(runtime()))),
    }
}

/// One login's refresh under the session's signal handling (see `interrupt`), retrying
/// transient failures as `retry` says. `Ok` with the run's result when no signal ended it;
/// `Err(code)` when one did, with what happened printed: the command stops there, with 128 +
/// the signal, or 1 when new tokens could not be saved.
pub fn refresh_interruptibly(
    session: &mut Session,
    store: &Store,
    policy: &Policy,
    mode: Mode,
    budget: std::time::Duration,
    retry: Retry,
) -> Result<Result<Outcome, RefreshError>, u8> {
    let control = RunControl::new();
    let run = refresh::refresh_controlled(store, policy, mode, budget, retry, &control);
    match session.run(&control, "refresh", run) {
        Ran::Done(result) => Ok(result),
        Ran::Stopped { signal } | Ran::Abandoned { signal } => Err(interrupt::exit_code(signal)),
        Ran::Finished {
            signal,
            result: Ok(outcome),
        } => {
            warn_malformed_copy(&outcome);
            interrupt::tell(format_args!(
                "{}; stopping ({})",
                describe_outcome(&outcome),
                interrupt::name(signal)
            ));
            Err(interrupt::exit_code(signal))
        }
        Ran::Finished {
            result: Err(e @ RefreshError::SaveFailed { .. }),
            ..
        } => Err(report(&e)),
        Ran::Finished {
            signal,
            result: Err(e),
        } => {
            interrupt::tell(format_args!("{e}"));
            Err(interrupt::exit_code(signal))
        }
    }
}

/// `--once` and `refresh` exit 0 only with a valid token stored. A run that refreshed nothing
/// may leave an expired (or blank) one: the 60 s floor held the refresh back. Then 75, saying
/// when to try again.
fn valid_after(store: &Store, outcome: &Outcome) -> u8 {
    let next_at = match outcome {
        Outcome::Refreshed { .. } => return exit::OK,
        Outcome::Fresh { next_at, .. } => Some(*next_at),
        Outcome::Adopted { .. } => None,
    };
    let view = match store.read() {
        Ok(snapshot) => snapshot.doc.oauth().ok().flatten(),
        Err(e) => return report(&RefreshError::Store(e)),
    };
    match view {
        Some(v) if v.access_token_lasts(epoch_millis(SystemTime::now()), 0) => exit::OK,
        Some(v) if !v.is_logged_out() => held_back(store, &v, next_at),
        _ => report(&RefreshError::LoginNeeded {
            place: store.place(),
            why: "the login was removed meanwhile",
        }),
    }
}

/// The stored token cannot be used (expired, blank, or too close to its end for `token`) and
/// no refresh may be sent yet: the floor holds back a grant this program obtained less than
/// a minute ago. Exit 75, saying when to try again.
pub fn held_back(store: &Store, view: &OAuthView, next_at: Option<i64>) -> u8 {
    let state = if view.access_token.is_blank() {
        "has no access token"
    } else if view
        .expires_at
        .is_some_and(|at| at <= epoch_millis(SystemTime::now()))
    {
        "has expired"
    } else {
        "has less than a minute left"
    };
    let retry = match next_at {
        Some(at) => format!("try again at {}", crate::show::when(at)),
        None => "try again in a minute".to_owned(),
    };
    interrupt::tell(format_args!(
        "the access token in {} {state}, and it may not be refreshed yet (no refresh within a \
         minute of the last one); {retry}",
        store.place()
    ));
    exit::TEMPFAIL
}

/// The one success `--once` is not silent about: the store did not parse when the new tokens
/// arrived, and its bytes were copied aside before they were written.
fn warn_malformed_copy(outcome: &Outcome) {
    if let Outcome::Refreshed {
        malformed_copy: Some(copy),
        ..
    } = outcome
    {
        interrupt::tell(format_args!(
            "warning: the credentials file did not parse when the new tokens arrived; its \
             bytes were copied unchanged to {} and the tokens were saved",
            copy.display()
        ));
    }
}

/// `refresh`: refresh each login now, even if not due.
pub fn refresh(settings: &Settings) -> u8 {
    interrupt::ignore_user_signals();
    let logins = match writing_mirrors(settings) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let many = logins.stores.len() > 1;
    let mut session = None;
    let mut codes = Vec::with_capacity(logins.stores.len());
    for (store, mirrors) in logins.stores.iter().zip(&logins.mirrors) {
        match refresh_one(settings, store, many, &mut session) {
            Ok((code, refreshed)) => {
                codes.push(code);
                mirrors::after_one_shot(settings, store, mirrors, refreshed);
            }
            Err(code) => return code,
        }
    }
    match session.as_mut().and_then(Session::pending) {
        Some(signal) => interrupt::exit_code(signal),
        None => worst(codes),
    }
}

fn refresh_one(
    settings: &Settings,
    store: &Store,
    many: bool,
    session: &mut Option<Session>,
) -> Result<(u8, bool), u8> {
    let policy = policy_for(settings);
    let mode = Mode::Force {
        expected: None,
        floor: Floor::Exempt,
    };
    let session = started(session)?;
    let result = refresh_interruptibly(
        session,
        store,
        &policy,
        mode,
        settings.retry_budget,
        Retry::WithinBudget,
    )?;
    Ok(match result {
        Ok(outcome) => {
            warn_malformed_copy(&outcome);
            let text = match many {
                true => format!("{}: {}\n", store.place(), describe_outcome(&outcome)),
                false => format!("{}\n", describe_outcome(&outcome)),
            };
            let refreshed = matches!(outcome, Outcome::Refreshed { .. });
            match emit(text.as_bytes()) {
                Ok(()) => (exit::OK, refreshed),
                Err(code) => (code, refreshed),
            }
        }
        Err(e) => (report(&e), false),
    })
}

pub fn describe_outcome(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Fresh { expires_at, .. } => {
            format!("Token is fresh; {}", describe_expiry(*expires_at))
        }
        Outcome::Refreshed {
            access_token,
            expires_at,
            ..
        } => format!(
            "Refreshed: access token {access_token}, {}",
            describe_expiry(Some(*expires_at))
        ),
        Outcome::Adopted { expires_at } => format!(
            "Another process had already refreshed the token; {}",
            describe_expiry(*expires_at)
        ),
    }
}

/// The daemon, in the foreground until SIGTERM or SIGINT.
pub fn daemon(settings: &Settings) -> u8 {
    let logins = match writing_mirrors(settings) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let policy = policy_for(settings);
    let user = crate::daemon::notify_user::UserNotifier::new(
        settings.notify_cmd.clone(),
        settings.notify == Some(crate::cli::NotifyChoice::Desktop),
    );
    let runtime = runtime();
    let code = runtime.block_on(async {
        match crate::daemon::Signals::new() {
            Ok(signals) => {
                let mirrors = (logins.mirrors, settings.mirror_cmd.clone());
                crate::daemon::Daemon::new(
                    logins.stores,
                    mirrors,
                    policy,
                    crate::daemon::SystemClock,
                    user,
                )
                .run(signals)
                .await
            }
            Err(e) => {
                eprintln!("claude-tokend: cannot install signal handlers: {e}");
                exit::FAILURE
            }
        }
    });
    // A `security` run still hanging on the blocking pool (a keychain waiting for a person)
    // must not hold up the exit: dropping the runtime would wait for it.
    runtime.shutdown_background();
    code
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
