//! `login` and `logout`: the terminal, browser and loopback-callback side of signing in and out.
//! The protocol (PKCE, the authorize URL, the exchange, the lossless save) is in
//! `tokend_core::login`; this module only talks to the user.

use std::io::{BufRead, IsTerminal, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use tokend_core::login::{
    self, DEFAULT_SCOPE, LONG_LIVED_SCOPE, LONG_LIVED_SECONDS, LoggedOut, LoginError, LoginRequest,
    PasteError, Pkce, ProfileLookup, authorize_url, check_state, parse_paste,
};
use tokend_core::refresh::RunControl;
use tokend_core::secret::Secret;
use tokend_core::store::StoreError;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::cli::{DEFAULT_CLIENT_ID, LoginArgs, Settings};
use crate::commands::{policy_for, runtime};
use crate::exit;
use crate::interrupt::{self, Ran, Session};
use crate::logins::one_store_for;
use crate::show::describe_expiry;

/// How long the loopback flow waits for the browser to come back.
const LOOPBACK_TIMEOUT: Duration = Duration::from_secs(5 * 60);

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
        match rt.block_on(loopback_code(settings, args, &pkce, client_id, &scope)) {
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
        match read_paste(&pkce.state) {
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

/// The longest paste read: a code with its state, or a whole callback URL, is a few hundred
/// bytes; anything longer is not one, and is not read on (`login < /dev/zero`).
const PASTE_LIMIT: usize = 64 * 1024;
/// Answers without a code (an Enter pressed too early, a stray line) before `login` gives up:
/// enough for a person, few enough that an endless stream of empty lines ends it.
const PASTE_TRIES: usize = 5;

/// Reads the code the sign-in page shows, asking again after an answer without one (an empty
/// line, say), until end of input or [`PASTE_TRIES`] answers. A paste that carries another
/// login attempt's state is refused at once: nothing is sent for it.
fn read_paste(state: &str) -> Result<Secret, u8> {
    let stdin = std::io::stdin();
    let typed = stdin.is_terminal();
    let mut input = stdin.lock();
    eprint!(
        "After signing in, the page shows a code. Paste it here (CODE#STATE) and press Enter: "
    );
    for attempt in 1..=PASTE_TRIES {
        let _ = std::io::stderr().flush();
        let line = match read_line_limited(&mut input, PASTE_LIMIT) {
            Ok(Line::Text(line)) => line,
            Ok(Line::End) => {
                eprintln!(
                    "\nclaude-tokend: no code was pasted before the end of input; nothing was \
                     sent. Run `claude-tokend login` again and paste the code the page shows"
                );
                return Err(exit::FAILURE);
            }
            Ok(Line::TooLong) => {
                eprintln!(
                    "\nclaude-tokend: the pasted text is longer than 64 KiB, which no code is; \
                     nothing was sent. Run `claude-tokend login` again and paste the code the \
                     page shows"
                );
                return Err(exit::FAILURE);
            }
            Err(e) => {
                eprintln!("\nclaude-tokend: cannot read the code from standard input: {e}");
                return Err(exit::FAILURE);
            }
        };
        // An answer that was not typed leaves the prompt's line open: end it, so what follows
        // (an error, the result) starts a line of its own.
        if !typed {
            eprintln!();
        }
        match parse_paste(&line) {
            Ok(pasted) => {
                if let Err(e) = check_state(&pasted, state) {
                    eprintln!("claude-tokend: {e}");
                    return Err(exit::FAILURE);
                }
                return Ok(pasted.code);
            }
            Err(e @ (PasteError::Empty | PasteError::NoCode)) if attempt < PASTE_TRIES => {
                let why = match e {
                    PasteError::Empty => "Nothing was pasted",
                    _ => "That has no authorization code",
                };
                eprint!(
                    "{why}. Paste the code the page shows (CODE#STATE) and press Enter, or end \
                     the input (Ctrl-D) to give up: "
                );
            }
            Err(PasteError::Empty | PasteError::NoCode) => {
                eprintln!(
                    "claude-tokend: no code after {PASTE_TRIES} answers; nothing was sent. Run \
                     `claude-tokend login` again and paste the code the page shows"
                );
                return Err(exit::FAILURE);
            }
            Err(e) => {
                eprintln!("claude-tokend: {e}");
                return Err(exit::FAILURE);
            }
        }
    }
    unreachable!("the last try returns")
}

/// One line of input, read no further than `limit` bytes.
enum Line {
    Text(String),
    /// End of input before any byte.
    End,
    /// More than `limit` bytes without a newline.
    TooLong,
}

fn read_line_limited(input: &mut impl BufRead, limit: usize) -> std::io::Result<Line> {
    let mut bytes = Vec::new();
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    let n = std::io::Read::take(&mut *input, cap).read_until(b'\n', &mut bytes)?;
    Ok(if n == 0 {
        Line::End
    } else if bytes.len() > limit && bytes.last() != Some(&b'\n') {
        Line::TooLong
    } else {
        Line::Text(String::from_utf8_lossy(&bytes).into_owned())
    })
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

/// The loopback flow: serve `/callback` on 127.0.0.1, send the browser there, and wait for the
/// code. Returns the redirect URI used (it must be repeated in the exchange) and the code.
async fn loopback_code(
    settings: &Settings,
    args: &LoginArgs,
    pkce: &Pkce,
    client_id: &str,
    scope: &str,
) -> Result<(String, Secret), u8> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.map_err(|e| {
        eprintln!("claude-tokend: cannot listen on 127.0.0.1 for the callback: {e}");
        exit::FAILURE
    })?;
    let port = listener.local_addr().map(|a| a.port()).unwrap_or_default();
    let redirect_uri = format!("http://localhost:{port}/callback");
    let url = authorize_url(
        &settings.authorize_url,
        client_id,
        &redirect_uri,
        scope,
        pkce,
    );
    show_url(&url, args.no_browser);
    eprintln!("Waiting for the browser to come back to {redirect_uri} …");
    let wait = async {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            if let Some(code) = answer_callback(stream, &pkce.state).await {
                return code;
            }
        }
    };
    match tokio::time::timeout(LOOPBACK_TIMEOUT, wait).await {
        Ok(Ok(code)) => Ok((redirect_uri, code)),
        Ok(Err(message)) => {
            eprintln!("claude-tokend: {message}");
            Err(exit::FAILURE)
        }
        Err(_) => {
            eprintln!(
                "claude-tokend: no answer on {redirect_uri} within 5 minutes. If the browser runs on \
                 another machine, use the paste flow: `claude-tokend login` without --loopback"
            );
            Err(exit::FAILURE)
        }
    }
}

/// Answers one request on the callback listener. `Some(Ok(code))` ends the wait with a code,
/// `Some(Err(..))` ends it with the provider's refusal; `None` (a stray request, a wrong state)
/// keeps waiting.
async fn answer_callback(
    mut stream: tokio::net::TcpStream,
    state: &str,
) -> Option<Result<Secret, String>> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    // A request head is small; anything bigger, or slower than a few seconds, is not a browser.
    let read = async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
    };
    if tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .is_err()
    {
        return None;
    }
    let text = String::from_utf8_lossy(&head);
    let target = text
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("GET "))
        .and_then(|l| l.split(' ').next())
        .unwrap_or("");
    let url = tokend_core::settings::Url::parse(&format!("http://localhost{target}")).ok();
    let Some(url) = url.filter(|u| u.path() == "/callback") else {
        respond(&mut stream, "404 Not Found", "Not found.").await;
        return None;
    };
    let param = |name: &str| {
        url.query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    };
    // The state first: any local process can reach this port, and only a callback that carries
    // this login's state comes from the sign-in page we opened. Anything else, an error included,
    // is ignored and the login keeps waiting.
    if param("state").as_deref() != Some(state) {
        respond(
            &mut stream,
            "400 Bad Request",
            "This sign-in link belongs to another login attempt; it was ignored.",
        )
        .await;
        tracing::warn!(
            "ignored a callback whose state does not match this login (another login attempt, \
             or another program); still waiting"
        );
        return None;
    }
    if let Some(error) = param("error") {
        respond(
            &mut stream,
            "200 OK",
            "Sign-in was not completed. You may close this window.",
        )
        .await;
        let detail = param("error_description").unwrap_or_default();
        return Some(Err(format!(
            "the sign-in page reported `{}` {}; nothing was saved",
            printable(&error),
            printable(&detail)
        )));
    }
    match param("code").filter(|c| !c.trim().is_empty()) {
        Some(code) => {
            respond(
                &mut stream,
                "200 OK",
                "Signed in to claude-tokend. You may close this window.",
            )
            .await;
            Some(Ok(Secret::new(code)))
        }
        None => {
            respond(
                &mut stream,
                "400 Bad Request",
                "The callback carried no code.",
            )
            .await;
            None
        }
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

async fn respond(stream: &mut tokio::net::TcpStream, status: &str, message: &str) {
    let body = format!(
        "<!doctype html><meta charset=utf-8><title>claude-tokend</title><p>{message}</p>\n"
    );
    let reply = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/html; charset=utf-8\r\ncontent-length: {}\r\n\
         connection: close\r\ncache-control: no-store\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(reply.as_bytes()).await;
    let _ = stream.shutdown().await;
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
