//! The one-shot commands (`--once`, `refresh`) and the glue every command shares: the policy,
//! the tokio runtime and signal handlers (only when a request may be needed: see `interrupt`),
//! and the mapping from outcomes to messages and exit codes. Which logins the settings name is
//! `logins`; their mirrors, `mirrors`.

use std::time::SystemTime;

use tokend_core::credentials::OAuthView;
use tokend_core::oauth::ClientConfig;
use tokend_core::refresh::{self, Floor, Mode, Outcome, Policy, RefreshError, Retry, RunControl};
use tokend_core::schedule::{epoch_millis, is_due};
use tokend_core::store::{Store, StoreError};

use crate::cli::{DEFAULT_CLIENT_ID, Settings};
use crate::exit;
use crate::interrupt::{self, Ran, Session};
use crate::mirrors::{self, Configured};
use crate::show::{describe_expiry, emit};

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
        // A blocking thread (a Keychain call, a mirror's write) is gone a second after its
        // work: the idle daemon keeps no thread, and the next minute's check makes new ones.
        .thread_keep_alive(std::time::Duration::from_secs(1))
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
    // A message names paths and quotes server text: neither may drive the terminal.
    interrupt::tell(format_args!(
        "{}",
        tokend_core::secret::printable(&e.to_string())
    ));
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
    let mut owed = Vec::new();
    for (store, mirrors) in logins.stores.iter().zip(&logins.mirrors) {
        match once_one(settings, store, &mut session) {
            Ok((code, refreshed)) => {
                codes.push(code);
                owed.extend(mirrors::after_one_shot(settings, store, mirrors, refreshed));
            }
            Err(code) => return code,
        }
    }
    match run_owed_commands(settings, owed, &mut session) {
        Some(signal) => interrupt::exit_code(signal),
        None => worst(codes),
    }
}

/// The `--mirror-cmd` runs a one-shot command owes, after every login was refreshed; a signal
/// (heard by the session's handlers, installed when anything was refreshed) stops the waiting.
/// Returns the signal that came meanwhile, if one did (the command stops with it).
fn run_owed_commands(
    settings: &Settings,
    owed: Vec<mirrors::Owed>,
    session: &mut Option<Session>,
) -> Option<i32> {
    let mut caught = None;
    if !owed.is_empty() {
        let mut stop = || {
            caught = caught.or_else(|| session.as_mut().and_then(Session::pending));
            caught.is_some()
        };
        mirrors::run_commands(settings, owed, &mut stop);
    }
    caught.or_else(|| session.as_mut().and_then(Session::pending))
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
    let mut owed = Vec::new();
    for (store, mirrors) in logins.stores.iter().zip(&logins.mirrors) {
        match refresh_one(settings, store, many, &mut session) {
            Ok((code, refreshed)) => {
                codes.push(code);
                owed.extend(mirrors::after_one_shot(settings, store, mirrors, refreshed));
            }
            Err(code) => return code,
        }
    }
    match run_owed_commands(settings, owed, &mut session) {
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
        crate::daemon::notify_user::Named {
            command: settings.origin("notify_cmd").name().to_owned(),
            desktop: match settings.origin("notify") {
                crate::cli::Origin::Variable(v) => format!("{v}=desktop"),
                _ => "--notify desktop".to_owned(),
            },
        },
    );
    let runtime = runtime();
    let code = runtime.block_on(async {
        match crate::daemon::Signals::new() {
            Ok(signals) => {
                let mirrors = (logins.mirrors, crate::mirrors::command_of(settings));
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
