//! `login` and `logout`: the terminal, browser and loopback-callback side of signing in and out.
//! The protocol (PKCE, the authorize URL, the exchange, the lossless save) is in
//! `tokend_core::login`; this module only talks to the user.
//!
//! This module runs both commands, shows the URL and opens a browser, and maps each outcome to
//! its message and exit code; `paste` reads the code the user pastes, `loopback` runs the
//! callback flow of `login --loopback`, and `callback` serves its connections.

mod callback;
mod loopback;
mod paste;

use std::convert::Infallible;
use std::io::{BufRead, IsTerminal, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use tokend_core::login::{
    self, DEFAULT_SCOPE, LONG_LIVED_SCOPE, LONG_LIVED_SECONDS, LoggedOut, LoginError, LoginRequest,
    LoginStep, Pkce, ProfileLookup, Saved, authorize_url,
};
use tokend_core::refresh::RunControl;
use tokend_core::secret::printable;
use tokend_core::store::StoreError;
use tokio::sync::watch;

use crate::cli::{DEFAULT_CLIENT_ID, LoginArgs, Settings};
use crate::commands::{policy_for, runtime};
use crate::exit;
use crate::interrupt::{self, InFlight, Ran, Session};
use crate::logins::one_store_for;
use crate::show::{describe_expiry, emit, say};

pub fn login(settings: &Settings, args: &LoginArgs) -> u8 {
    let store = match one_store_for(settings, "login") {
        Ok(s) => s,
        Err(code) => return code,
    };
    let pkce = Pkce::generate();
    let scope = args.scope.clone().unwrap_or_else(|| {
        if args.long_lived {
            LONG_LIVED_SCOPE
        } else {
            DEFAULT_SCOPE
        }
        .to_owned()
    });
    let client_id = settings.client_id.as_str();
    let rt = runtime();
    // Before anyone is sent to the browser: a login that could not be saved is refused now.
    if let Err(e) = rt.block_on(login::check_store(&store, settings.retry_budget)) {
        eprintln!(
            "claude-tokend: {e}. A login could not be saved there, so signing in was not started"
        );
        return match e {
            StoreError::KeychainUnavailable { .. } | StoreError::LockTimeout { .. } => {
                exit::TEMPFAIL
            }
            _ => exit::CONFIG,
        };
    }

    let (redirect_uri, code) = if args.loopback {
        match rt.block_on(loopback::loopback_code(
            settings, args, &pkce, client_id, &scope,
        )) {
            Ok(pair) => pair,
            Err(code) => return code,
        }
    } else {
        let redirect_uri = settings.redirect_uri.to_string();
        let url = authorize_url(
            &settings.authorize_url,
            client_id,
            &redirect_uri,
            &scope,
            &pkce,
        );
        if let Err(code) = show_url(&url, args.no_browser) {
            return code;
        }
        match paste::read_paste(&pkce.state) {
            Ok(code) => (redirect_uri, code),
            Err(code) => return code,
        }
    };

    let policy = policy_for(settings);
    let token_url_setting = settings.origin("token_url").name().to_owned();
    let redirect_uri_setting =
        (!args.loopback).then(|| settings.origin("redirect_uri").name().to_owned());
    let request = LoginRequest {
        client: &policy.client,
        client_id,
        client_id_origin: &policy.client_id_origin,
        // As Claude Code: a client the user chose is recorded with the login, so its refreshes
        // use it whatever the settings say then; the built-in one is not.
        store_client_id: client_id != DEFAULT_CLIENT_ID,
        redirect_uri: &redirect_uri,
        pkce: &pkce,
        code: &code,
        expires_in: args.long_lived.then_some(LONG_LIVED_SECONDS),
        scope: &scope,
        api_url: &settings.api_url,
        token_url_setting: &token_url_setting,
        redirect_uri_setting: redirect_uri_setting.as_deref(),
    };
    // From here the code may be spent: signals wait for the exchange's answer and its save.
    let control = RunControl::new();
    let mut session = Session::start(rt);
    // The step the login is in, so a signal, or a slow profile lookup, names it.
    let steps = watch::Sender::new(LoginStep::Exchange);
    let on_step = |step: LoginStep| {
        steps.send_replace(step);
    };
    let run = async {
        let save = login::save_login(&store, &request, settings.retry_budget, &control, &on_step);
        tokio::select! {
            result = save => result,
            never = slow_lookup_notice(steps.subscribe()) => match never {},
        }
    };
    let (result, signal) = match session.run(&control, Steps(&steps), run) {
        Ran::Done(result) => (result, session.pending()),
        Ran::Finished { signal, result } => (result, Some(signal)),
        Ran::Stopped { signal } | Ran::Abandoned { signal } => return interrupt::exit_code(signal),
    };
    // A signal that waited for the login ends the command with it, once the outcome is told.
    let stopped = |code: u8| signal.map_or(code, interrupt::exit_code);
    match result {
        Ok(saved) => {
            // The login is saved whatever becomes of this text: a reader that has gone
            // (`login | head -1`), or a terminal that hung up (SIGHUP, then EIO on every write),
            // ends the output quietly and leaves the exit code as it is.
            let place = printable(&store.place().to_string());
            say(format_args!("{}", signed_in(&place, &saved).trim_end()));
            warn_profile(&saved.profile);
            stopped(exit::OK)
        }
        Err(e) => {
            interrupt::tell(format_args!("{}", printable(&e.to_string())));
            match e {
                // The login is lost whatever stopped it: the user must hear it by its code.
                LoginError::SaveFailed(_) => exit::FAILURE,
                LoginError::Store(
                    StoreError::Missing { .. }
                    | StoreError::Unreadable { .. }
                    | StoreError::Malformed { .. },
                ) => stopped(exit::CONFIG),
                LoginError::Store(
                    StoreError::LockTimeout { .. } | StoreError::KeychainUnavailable { .. },
                )
                | LoginError::Unavailable(_)
                | LoginError::MaybeSpent(_) => stopped(exit::TEMPFAIL),
                // A setting must change first: another login as things are fails the same way.
                LoginError::Store(_)
                | LoginError::ClientRefused { .. }
                | LoginError::NotTheCode { .. }
                | LoginError::Endpoint(_) => stopped(exit::FAILURE),
                // Only here does a new login (a new code) help.
                LoginError::Refused(_) => stopped(exit::LOGIN_NEEDED),
            }
        }
    }
}

/// How long the profile lookup may take before `login` says what it waits for: a lookup
/// answers in well under a second, and a silent terminal for longer looks hung.
const SLOW_LOOKUP: Duration = Duration::from_millis(1500);

/// Says, once the profile lookup has taken [`SLOW_LOOKUP`], what `login` is waiting for and
/// that the login is safe. Never ends: it runs beside the login, which ends first.
async fn slow_lookup_notice(mut steps: watch::Receiver<LoginStep>) -> Infallible {
    if steps
        .wait_for(|s| *s == LoginStep::ProfileLookup)
        .await
        .is_ok()
    {
        tokio::time::sleep(SLOW_LOOKUP).await;
        if *steps.borrow() == LoginStep::ProfileLookup {
            note(format_args!(
                "Looking up the account's plan (the login is already exchanged; Ctrl-C saves \
                 it without the plan)…"
            ));
        }
    }
    std::future::pending().await
}

/// The step a signal finds `login` in, named in what the signal does.
struct Steps<'a>(&'a watch::Sender<LoginStep>);

impl InFlight for Steps<'_> {
    fn awaited(&self) -> String {
        match *self.0.borrow() {
            LoginStep::Exchange => {
                "waiting for the code exchange in flight, then stopping".to_owned()
            }
            LoginStep::ProfileLookup => "the code is already exchanged: the profile lookup is \
                cut short and the new login saved without its plan (Claude Code fills it in), \
                then stopping"
                .to_owned(),
            LoginStep::Save => "waiting for the new login to be saved, then stopping".to_owned(),
        }
    }

    fn abandoned(&self) -> String {
        match *self.0.borrow() {
            LoginStep::Exchange | LoginStep::ProfileLookup => {
                "stopped before the new login was saved, so the new login is lost (the server \
                 may have spent its code); the login stored before, if any, is untouched. Run \
                 `claude-tokend login` again to sign in"
                    .to_owned()
            }
            LoginStep::Save => "stopped while the new login was being saved: the store holds \
                either the new login or the one before, whole (a save is all or nothing); \
                `claude-tokend status` shows which"
                .to_owned(),
        }
    }
}

/// What stdout says of a saved login: where, its access token (masked) and expiry, and the
/// account and plan the profile gave. Server text in it is escaped.
fn signed_in(place: &str, saved: &Saved) -> String {
    let mut out = format!(
        "Signed in. Saved to {place}\nAccess token {}, {}\n",
        saved.access_token,
        describe_expiry(Some(saved.expires_at))
    );
    if let ProfileLookup::Read(p) = &saved.profile {
        if let Some(email) = &p.email {
            out.push_str(&format!("Account {}\n", printable(email)));
        }
        let show = |t: &String| printable(t);
        match (&p.subscription_type, &p.rate_limit_tier) {
            (Some(plan), Some(tier)) => {
                out.push_str(&format!("Plan {} ({})\n", show(plan), show(tier)));
            }
            (Some(plan), None) => out.push_str(&format!("Plan {}\n", show(plan))),
            (None, Some(tier)) => out.push_str(&format!("Rate-limit tier {}\n", show(tier))),
            (None, None) => {}
        }
    }
    if !saved.has_refresh_token {
        out.push_str(
            "This login has no refresh token, so it cannot be renewed: sign in again before it \
             expires (--once and the daemon report exit 77 when it is due).\n",
        );
    }
    out
}

/// Why the login has no plan, when the profile lookup did not give one. A failed lookup is no
/// failed login: the tokens are saved, and Claude Code fills the plan in itself later.
fn warn_profile(lookup: &ProfileLookup) {
    match lookup {
        ProfileLookup::Read(_) | ProfileLookup::Skipped => {}
        ProfileLookup::Interrupted => interrupt::tell(format_args!(
            "the login was saved without its plan (subscriptionType, rateLimitTier): the signal \
             cut the profile lookup short; Claude Code fills the plan in itself"
        )),
        ProfileLookup::Failed(e) => interrupt::tell(format_args!(
            "warning: could not read the account's profile ({}); the login was saved without \
             its plan (subscriptionType, rateLimitTier), which Claude Code then fills in itself",
            short(&e.to_string())
        )),
    }
}

/// A line on stderr that may fail unnoticed: once the code exchange is sent, a terminal that
/// has gone must not end `login` (an `eprintln!` would panic) before the answer is saved.
fn note(line: std::fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Prints the URL on stdout (a headless machine's user copies it) and, where there is a
/// display, tries to open a browser. Failing to open one is not an error; failing to print
/// the URL is (exit 1: nothing was sent).
fn show_url(url: &tokend_core::settings::Url, no_browser: bool) -> Result<(), u8> {
    eprintln!("Open this URL in a browser to sign in:");
    emit(format!("{url}\n").as_bytes())?;
    if !no_browser {
        open_browser(url.as_str());
    }
    Ok(())
}

fn open_browser(url: &str) {
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else if std::env::var_os("DISPLAY").is_some() || std::env::var_os("WAYLAND_DISPLAY").is_some()
    {
        "xdg-open"
    } else {
        return;
    };
    match Command::new(opener)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    {
        // Reap it in the background so no zombie lingers while we wait for the code.
        Ok(mut child) => {
            std::thread::spawn(move || child.wait());
        }
        Err(e) => tracing::debug!("cannot start {opener}: {e}"),
    }
}

/// Text from the provider, safe to print: escaped by [`printable`], and kept short.
fn short(text: &str) -> String {
    printable(&text.chars().take(300).collect::<String>())
}

pub fn logout(settings: &Settings, yes: bool) -> u8 {
    let store = match one_store_for(settings, "logout") {
        Ok(s) => s,
        Err(code) => return code,
    };
    let path = store.place().to_string();
    let rt = runtime();
    // Nothing to remove is no failure (a second logout), and nothing to ask about either.
    match rt.block_on(login::has_login(&store)) {
        Ok(true) => {}
        Ok(false) => {
            println!("No login in {path}; nothing to remove.");
            return exit::OK;
        }
        Err(e) => {
            eprintln!("claude-tokend: {e}");
            return store_exit(&e);
        }
    }
    if !yes {
        if !std::io::stdin().is_terminal() {
            eprintln!(
                "claude-tokend: refusing to log out without confirmation (no terminal to ask on); \
                 nothing changed. Pass --yes to remove the login from {path}"
            );
            return exit::FAILURE;
        }
        eprint!("Remove the Claude login from {path}? Other keys in the file stay. [y/N] ");
        let _ = std::io::stderr().flush();
        let mut answer = String::new();
        let _ = std::io::stdin().lock().read_line(&mut answer);
        if !matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
            eprintln!("Nothing changed.");
            return exit::FAILURE;
        }
    }
    match rt.block_on(login::logout(&store, settings.retry_budget)) {
        Ok(LoggedOut::Removed) => {
            println!("Logged out: removed the login from {path}; other keys were kept.");
            exit::OK
        }
        Ok(LoggedOut::Deleted) => {
            println!("Logged out: {path} held only the login and was deleted.");
            exit::OK
        }
        Ok(LoggedOut::NothingToDo) => {
            println!("No login in {path}; nothing changed.");
            exit::OK
        }
        Err(e) => {
            eprintln!("claude-tokend: {e}");
            store_exit(&e)
        }
    }
}

/// What a store failure of `logout` means to a script.
fn store_exit(e: &StoreError) -> u8 {
    match e {
        StoreError::Missing { .. }
        | StoreError::Unreadable { .. }
        | StoreError::Malformed { .. } => exit::CONFIG,
        StoreError::LockTimeout { .. } | StoreError::KeychainUnavailable { .. } => exit::TEMPFAIL,
        _ => exit::FAILURE,
    }
}
