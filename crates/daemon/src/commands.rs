//! The one-shot commands (`--once`, `refresh`, `status`) and the glue they share: building the
//! store and policy from the settings, the tokio runtime (only when a request may be needed),
//! and the mapping from outcomes to messages and exit codes.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use serde_json::json;
use tokend_core::oauth::ClientConfig;
use tokend_core::refresh::{self, Floor, Mode, Outcome, Policy, RefreshError};
use tokend_core::schedule::{due_at, epoch_millis, is_due};
use tokend_core::store::{self, FILE_MODE, Keychain, Kind, LocateEnv, Place, Store, StoreError};

use crate::cli::{DEFAULT_CLIENT_ID, Settings, StoreChoice};
use crate::exit;
use crate::show::{describe_expiry, emit, local_time, relative, when};

/// Finds the login's store from the settings and the environment: the credentials path in
/// the contract's order, and the kind of store `--store` asks for.
pub fn store_for(settings: &Settings) -> Result<Store, u8> {
    let env = LocateEnv::from_process();
    let path = match store::locate(settings.credentials.as_deref(), &env) {
        Ok((path, _origin)) => path,
        Err(e) => {
            eprintln!("claude-tokend: {e}");
            return Err(exit::USAGE);
        }
    };
    let item = || Keychain {
        service: store::keychain_service(&env),
        account: store::keychain_account(&env),
    };
    match settings.store {
        StoreChoice::File => Ok(Store::new(path)),
        StoreChoice::Keychain if settings.credentials.is_some() => {
            eprintln!(
                "claude-tokend: --credentials (or CLAUDE_TOKEND_CREDENTIALS) names a file, which \
                 --store keychain does not use: drop one of them (CLAUDE_CONFIG_DIR chooses the \
                 Keychain item of another config directory)"
            );
            Err(exit::USAGE)
        }
        StoreChoice::Keychain => Ok(Store::keychain(path, item())),
        StoreChoice::Auto => Ok(auto_store(path, item, settings.credentials.is_some())),
    }
}

/// `--store auto`: where Claude Code itself keeps the login. On macOS that is the Keychain
/// item when it exists, else the file when it exists, else the Keychain (where a new login
/// goes); a Keychain that cannot be asked (locked) is a Keychain failure, never a reason to use
/// the file. Elsewhere, and for an explicit `--credentials`, the file.
fn auto_store(path: std::path::PathBuf, item: impl FnOnce() -> Keychain, explicit: bool) -> Store {
    if !cfg!(target_os = "macos") || explicit {
        return Store::new(path);
    }
    let item = item();
    match item.exists() {
        Ok(false) if path.exists() => Store::new(path),
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

fn report(e: &RefreshError) -> u8 {
    eprintln!("claude-tokend: {e}");
    exit_code(e)
}

/// `--once`: refresh only if due. Silent on success.
pub fn once(settings: &Settings) -> u8 {
    let store = match store_for(settings) {
        Ok(s) => s,
        Err(code) => return code,
    };
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
            refresh::tidy(&store, &lock);
        }
        tracing::info!(expires = %describe_expiry(view.expires_at), "token is fresh; nothing to do");
        return exit::OK;
    }
    let policy = policy_for(settings);
    let result = runtime().block_on(refresh::refresh_with_budget(
        &store,
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

/// `refresh`: refresh now, even if not due.
pub fn refresh(settings: &Settings) -> u8 {
    let store = match store_for(settings) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let policy = policy_for(settings);
    let result = runtime().block_on(refresh::refresh_with_budget(
        &store,
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
            match emit(format!("{}\n", describe_outcome(&outcome)).as_bytes()) {
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

/// `status [--json]`.
pub fn status(settings: &Settings, as_json: bool) -> u8 {
    let store = match store_for(settings) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let snapshot = match read_settled_blocking(&store) {
        Ok(s) => s,
        Err(e) => return report(&RefreshError::Store(e)),
    };
    let place = store.place();
    let target = store.target();
    let target_text = (target != store.path()).then(|| target.display().to_string());
    // What every JSON object says about where the login is (the same keys in the array a
    // multi-login status prints).
    let mut located = serde_json::Map::new();
    located.insert("store".into(), json!(store.kind().name()));
    located.insert(
        "configDir".into(),
        json!(store.path().parent().map(|d| d.display().to_string())),
    );
    match &place {
        Place::File(path) => {
            located.insert("path".into(), json!(path.display().to_string()));
            located.insert("target".into(), json!(target_text));
        }
        Place::Item { service, account } => {
            located.insert("service".into(), json!(service));
            located.insert("account".into(), json!(account));
        }
    }
    let with_location = |rest: serde_json::Value| {
        let mut doc = located.clone();
        if let serde_json::Value::Object(rest) = rest {
            doc.extend(rest);
        }
        serde_json::Value::Object(doc)
    };
    let mode_ok = snapshot.mode & 0o077 == 0;
    let mode_text = format!("{:04o}", snapshot.mode);
    // Everything for stdout is gathered first and written once: a reader that goes away (a
    // closed pipe) then costs nothing but the write.
    let mut out = String::new();
    let view = match snapshot.doc.oauth() {
        Ok(Some(v)) if !v.is_logged_out() => v,
        Ok(_) => {
            if as_json {
                let doc = with_location(json!({"loggedIn": false,
                                 "fileMode": mode_text, "fileModeOk": mode_ok}));
                out = pretty(&doc);
            }
            let _ = emit(out.as_bytes());
            eprintln!(
                "claude-tokend: {place}: no login there; a new login is needed: \
                 run `claude-tokend login` (or sign in with Claude Code)"
            );
            return exit::LOGIN_NEEDED;
        }
        Err(_) => unreachable!("Credentials::parse validated the owned fields"),
    };
    let now = epoch_millis(SystemTime::now());
    let email = account_email();
    let expired = view.expires_at.is_none_or(|at| at <= now);
    let refresh_due = view
        .expires_at
        .map(|at| due_at(at, settings.refresh_before));
    if as_json {
        let doc = with_location(json!({
            "loggedIn": true,
            "accessToken": view.access_token.masked(),
            "refreshToken": view.refresh_token.as_ref().map(|t| t.masked()),
            "expiresAt": view.expires_at,
            "expiresAtLocal": view.expires_at.map(local_time),
            "expiresInSeconds": view.expires_at.map(|at| at.saturating_sub(now) / 1000),
            "expired": expired,
            "refreshDueAt": refresh_due,
            "refreshTokenExpiresAt": view.refresh_token_expires_at,
            "refreshTokenExpiresAtLocal": view.refresh_token_expires_at.map(local_time),
            "scopes": view.scopes,
            "subscriptionType": view.subscription_type,
            "rateLimitTier": view.rate_limit_tier,
            "clientId": view.client_id,
            "email": email,
            "fileMode": mode_text,
            "fileModeOk": mode_ok,
        }));
        out = pretty(&doc);
    } else {
        let mut row = |k: &str, v: String| {
            let _ = writeln!(out, "{k:<15}{v}");
        };
        row("Store:", store.kind().name().to_owned());
        match &place {
            Place::File(path) => {
                row("Credentials:", path.display().to_string());
                if let Some(t) = &target_text {
                    row("Symlink to:", t.clone());
                }
            }
            Place::Item { service, account } => {
                row("Keychain item:", format!("{service} (account {account})"));
            }
        }
        row("Access token:", view.access_token.masked());
        row(
            "Refresh token:",
            match &view.refresh_token {
                Some(t) if !t.is_blank() => t.masked(),
                _ => "(none: this login cannot be renewed)".into(),
            },
        );
        row(
            "Expires:",
            match view.expires_at {
                Some(at) if at <= now => format!("{} (expired {})", local_time(at), relative(at)),
                Some(at) => when(at),
                None => "unknown".into(),
            },
        );
        if let Some(due) = refresh_due {
            row(
                "Refresh due:",
                if due <= now { "now".into() } else { when(due) },
            );
        }
        if let Some(at) = view.refresh_token_expires_at {
            row("Login valid:", format!("log in again before {}", when(at)));
        }
        if let Some(scopes) = &view.scopes {
            row("Scopes:", scopes.join(" "));
        }
        match (&view.subscription_type, &view.rate_limit_tier) {
            (Some(p), Some(t)) => row("Plan:", format!("{p} ({t})")),
            (Some(p), None) => row("Plan:", p.clone()),
            (None, Some(t)) => row("Plan:", t.clone()),
            (None, None) => {}
        }
        if let Some(e) = &email {
            row("Account:", e.clone());
        }
    }
    if let Err(code) = emit(out.as_bytes()) {
        return code;
    }
    if let Some(at) = view.refresh_token_expires_at
        && at.saturating_sub(now) <= 3 * 86_400_000
    {
        eprintln!(
            "claude-tokend: warning: the login itself ends {}; no refresh can extend it: \
             log in again before then (claude-tokend login)",
            when(at)
        );
    }
    if !mode_ok && store.kind() == Kind::File {
        eprintln!(
            "claude-tokend: warning: {place} has mode {mode_text}; it should be {FILE_MODE:04o} \
             (run: chmod 600 {place})"
        );
    }
    if expired { exit::FAILURE } else { exit::OK }
}

/// The signed-in account's email as Claude Code's own config records it, for `status` to show.
/// The config sits beside the default credentials (`$CLAUDE_CONFIG_DIR`, else HOME), found as
/// Claude Code finds it; it is only read, and anything odd about it just leaves the email out.
fn account_email() -> Option<String> {
    tokend_core::profile::email_from_claude_config(
        std::env::var_os("CLAUDE_CONFIG_DIR"),
        std::env::var_os("HOME"),
    )
}

fn pretty(doc: &serde_json::Value) -> String {
    serde_json::to_string_pretty(doc).expect("a JSON value always serializes") + "\n"
}

/// `read_settled` without a runtime: `status` must stay as cheap as the `--once` fast path.
fn read_settled_blocking(store: &Store) -> Result<store::Snapshot, StoreError> {
    let mut tries = 1;
    loop {
        match store.read() {
            Err(e) if e.may_be_mid_write() && tries < 5 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(200));
            }
            other => return other,
        }
    }
}

/// The daemon, in the foreground until SIGTERM or SIGINT.
pub fn daemon(settings: &Settings) -> u8 {
    let store = match store_for(settings) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let policy = policy_for(settings);
    runtime().block_on(async {
        match crate::daemon::Signals::new() {
            Ok(signals) => {
                crate::daemon::Daemon::new(vec![store], policy, crate::daemon::SystemClock)
                    .run(signals)
                    .await
            }
            Err(e) => {
                eprintln!("claude-tokend: cannot install signal handlers: {e}");
                exit::FAILURE
            }
        }
    })
}
