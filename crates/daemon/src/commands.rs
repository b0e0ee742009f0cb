//! The one-shot commands (`--once`, `refresh`) and the glue every command shares: which logins
//! the settings name (and their stores), the policy, the tokio runtime (only when a request may
//! be needed), and the mapping from outcomes to messages and exit codes.

use std::time::SystemTime;

use tokend_core::oauth::ClientConfig;
use tokend_core::refresh::{self, Floor, Mode, Outcome, Policy, RefreshError};
use tokend_core::schedule::{epoch_millis, is_due};
use tokend_core::store::{self, Keychain, LocateEnv, Store, StoreError};

use crate::cli::{DEFAULT_CLIENT_ID, LoginFlag, Settings, StoreChoice};
use crate::exit;
use crate::show::{describe_expiry, emit};

/// Every login the settings name, in order (see CONTRACT.md "Several logins, one daemon"): the
/// `--credentials`/`--config-dir` flags when any is given; else the `:`-separated
/// CLAUDE_TOKEND_CONFIG_DIRS; else the one login located as in "Where the credentials live".
/// Two entries naming the same store are one login. A bad combination exits 2.
pub fn stores_for(settings: &Settings) -> Result<Vec<Store>, u8> {
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
        // `:`-separated, like PATH; empty entries are skipped.
        for dir in std::env::split_paths(&list).filter(|d| !d.as_os_str().is_empty()) {
            stores.push(config_dir_store(settings, &env, dir.as_os_str())?);
        }
    }
    if stores.is_empty() {
        stores.push(default_store(settings, &env)?);
    }
    let mut unique: Vec<Store> = Vec::new();
    for store in stores {
        if !unique.iter().any(|s| s.same_store(&store)) {
            unique.push(store);
        }
    }
    Ok(unique)
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
            | StoreError::Malformed { .. },
        ) => exit::CONFIG,
        RefreshError::Store(
            StoreError::LockTimeout { .. } | StoreError::KeychainUnavailable { .. },
        )
        | RefreshError::Transient { .. } => exit::TEMPFAIL,
        RefreshError::LoginNeeded { .. } | RefreshError::Rejected { .. } => exit::LOGIN_NEEDED,
        RefreshError::Store(StoreError::Lock { .. } | StoreError::Write { .. })
        | RefreshError::SaveFailed { .. }
        | RefreshError::ClientRefused { .. }
        | RefreshError::Endpoint { .. } => exit::FAILURE,
    }
}

pub fn report(e: &RefreshError) -> u8 {
    eprintln!("claude-tokend: {e}");
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
    match stores_for(settings) {
        Ok(stores) => worst(stores.iter().map(|s| once_one(settings, s))),
        Err(code) => code,
    }
}

fn once_one(settings: &Settings, store: &Store) -> u8 {
    // The fast path: a fresh token is decided from one unlocked read, with no runtime, no HTTP
    // client and no lock. Anything else (due, missing, odd) takes the full path, which reads
    // again under the lock before deciding anything.
    if let Ok(snapshot) = store.read()
        && let Ok(Some(view)) = snapshot.doc.oauth()
        && !view.is_logged_out()
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
        tracing::info!(expires = %describe_expiry(view.expires_at), "token is fresh; nothing to do");
        return exit::OK;
    }
    let policy = policy_for(settings);
    let result = runtime().block_on(refresh::refresh_with_budget(
        store,
        &policy,
        Mode::IfDue,
        settings.retry_budget,
    ));
    match result {
        Ok(outcome) => {
            warn_malformed_copy(&outcome);
            tracing::info!("{}", describe_outcome(&outcome));
            exit::OK
        }
        Err(e) => report(&e),
    }
}

/// The one success `--once` is not silent about: the store did not parse when the new tokens
/// arrived, and its bytes were copied aside before they were written.
fn warn_malformed_copy(outcome: &Outcome) {
    if let Outcome::Refreshed {
        malformed_copy: Some(copy),
        ..
    } = outcome
    {
        eprintln!(
            "claude-tokend: warning: the credentials file did not parse when the new tokens \
             arrived; its bytes were copied unchanged to {} and the tokens were saved",
            copy.display()
        );
    }
}

/// `refresh`: refresh each login now, even if not due.
pub fn refresh(settings: &Settings) -> u8 {
    let stores = match stores_for(settings) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let many = stores.len() > 1;
    worst(stores.iter().map(|s| refresh_one(settings, s, many)))
}

fn refresh_one(settings: &Settings, store: &Store, many: bool) -> u8 {
    let policy = policy_for(settings);
    let result = runtime().block_on(refresh::refresh_with_budget(
        store,
        &policy,
        Mode::Force {
            expected: None,
            floor: Floor::Exempt,
        },
        settings.retry_budget,
    ));
    match result {
        Ok(outcome) => {
            warn_malformed_copy(&outcome);
            let text = match many {
                true => format!("{}: {}\n", store.place(), describe_outcome(&outcome)),
                false => format!("{}\n", describe_outcome(&outcome)),
            };
            match emit(text.as_bytes()) {
                Ok(()) => exit::OK,
                Err(code) => code,
            }
        }
        Err(e) => report(&e),
    }
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
    let stores = match stores_for(settings) {
        Ok(s) => s,
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
                crate::daemon::Daemon::new(stores, policy, crate::daemon::SystemClock, user)
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
