//! `login` and `logout`: the terminal, browser and loopback-callback side of signing in and out.
//! The protocol (PKCE, the authorize URL, the exchange, the lossless save) is in
//! `tokend_core::login`; this module only talks to the user.
//!
//! This module runs both commands, shows the URL and opens a browser, and maps each outcome to
//! its message and exit code; `paste` reads the code the user pastes, `loopback` serves the
//! callback of `login --loopback`.

mod loopback;
mod paste;

use std::io::{BufRead, IsTerminal, Write};
use std::process::{Command, Stdio};

use tokend_core::login::{
    self, DEFAULT_SCOPE, LONG_LIVED_SCOPE, LONG_LIVED_SECONDS, LoggedOut, LoginError, LoginRequest,
    Pkce, ProfileLookup, authorize_url,
};
use tokend_core::refresh::RunControl;
use tokend_core::store::StoreError;

use crate::cli::{DEFAULT_CLIENT_ID, LoginArgs, Settings};
use crate::commands::{policy_for, runtime};
use crate::exit;
use crate::interrupt::{self, Ran, Session};
use crate::logins::one_store_for;
use crate::show::describe_expiry;

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
        show_url(&url, args.no_browser);
        match paste::read_paste(&pkce.state) {
            Ok(code) => (redirect_uri, code),
            Err(code) => return code,
        }
    };

    let policy = policy_for(settings);
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
    };
    // From here the code may be spent: signals wait for the exchange's answer and its save.
    let control = RunControl::new();
    let mut session = Session::start(rt);
    let run = login::save_login(&store, &request, settings.retry_budget, &control);
    let (result, signal) = match session.run(&control, "code exchange", run) {
        Ran::Done(result) => (result, session.pending()),
        Ran::Finished { signal, result } => (result, Some(signal)),
        Ran::Stopped { signal } | Ran::Abandoned { signal } => return interrupt::exit_code(signal),
    };
    // A signal that waited for the login ends the command with it, once the outcome is told.
    let stopped = |code: u8| signal.map_or(code, interrupt::exit_code);
    match result {
        Ok(saved) => {
            println!("Signed in. Saved to {}", store.place());
            println!(
                "Access token {}, {}",
                saved.access_token,
                describe_expiry(Some(saved.expires_at))
            );
            show_profile(&saved.profile);
            if !saved.has_refresh_token {
                println!(
                    "This login has no refresh token, so it cannot be renewed: sign in again \
                     before it expires (--once and the daemon report exit 77 when it is due)."
                );
            }
            stopped(exit::OK)
        }
        Err(e) => {
            interrupt::tell(format_args!("{e}"));
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
                | LoginError::Endpoint(_) => stopped(exit::FAILURE),
                // Only here does a new login (a new code) help.
                LoginError::Refused(_) => stopped(exit::LOGIN_NEEDED),
            }
        }
    }
}

/// The account and plan the profile gave, or why there are none. A failed lookup is no failed
/// login: the tokens are saved, and Claude Code fills the plan in itself later.
fn show_profile(lookup: &ProfileLookup) {
    match lookup {
        ProfileLookup::Read(p) => {
            if let Some(email) = &p.email {
                println!("Account {email}");
            }
            match (&p.subscription_type, &p.rate_limit_tier) {
                (Some(plan), Some(tier)) => println!("Plan {plan} ({tier})"),
                (Some(plan), None) => println!("Plan {plan}"),
                (None, Some(tier)) => println!("Rate-limit tier {tier}"),
                (None, None) => {}
            }
        }
        ProfileLookup::Skipped => {}
        ProfileLookup::Interrupted => interrupt::tell(format_args!(
            "the login was saved without its plan (subscriptionType, rateLimitTier): the signal \
             cut the profile lookup short; Claude Code fills the plan in itself"
        )),
        ProfileLookup::Failed(e) => eprintln!(
            "claude-tokend: warning: could not read the account's profile ({}); the login was \
             saved without its plan (subscriptionType, rateLimitTier), which Claude Code then \
             fills in itself",
            printable(&e.to_string())
        ),
    }
}

/// Prints the URL on stdout (a headless machine's user copies it) and, where there is a
/// display, tries to open a browser. Failing to open one is not an error.
fn show_url(url: &tokend_core::settings::Url, no_browser: bool) {
    eprintln!("Open this URL in a browser to sign in:");
    println!("{url}");
    let _ = std::io::stdout().flush();
    if !no_browser {
        open_browser(url.as_str());
    }
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

/// Text from the provider, safe to print: control characters (escape sequences, newlines) are
/// shown escaped, so a callback cannot drive the user's terminal, and it is kept short.
fn printable(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars().take(300) {
        if c.is_control() {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
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
