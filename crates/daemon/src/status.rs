//! `status [--json]`: what each configured login looks like, without a secret: where it is
//! kept, masked tokens, expiry and the next refresh, the login's own deadline, plan and account.
//! One read per login, no runtime and no lock, so it is as cheap as `--once`'s fast path.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use serde_json::json;
use tokend_core::credentials::OAuthView;
use tokend_core::mirror::Mirror;
use tokend_core::refresh::RefreshError;
use tokend_core::schedule::epoch_millis;
use tokend_core::secret::printable;
use tokend_core::store::{self, FILE_MODE, Kind, Place, Store, StoreError};

use crate::cli::Settings;
use crate::commands::{report, worst};
use crate::exit;
use crate::show::{emit, local_time, relative, when};

/// `status [--json]`: every configured login; the exit code is the worst of them. With more
/// than one login, `--json` prints an array, and the text a block per login.
pub fn status(settings: &Settings, as_json: bool) -> u8 {
    let logins = match crate::mirrors::configured(settings) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let many = logins.stores.len() > 1;
    let mut codes = Vec::new();
    let mut docs = Vec::new();
    let mut texts = Vec::new();
    for (store, mirrors) in logins.stores.iter().zip(&logins.mirrors) {
        let shown = status_one(settings, store, mirrors, many);
        codes.push(shown.code);
        docs.extend(shown.json);
        texts.extend(shown.text);
    }
    // Everything for stdout is gathered first and written once: a reader that goes away (a
    // closed pipe) then costs nothing but the write.
    let out = match (as_json, many) {
        (true, false) => docs.first().map(pretty).unwrap_or_default(),
        (true, true) => pretty(&serde_json::Value::Array(docs)),
        (false, _) => texts.join("\n"),
    };
    if let Err(code) = emit(out.as_bytes()) {
        return code;
    }
    worst(codes)
}

/// What `status` found about one login: its exit code, its JSON object and its text block
/// (none for a login whose store could not be read, when it is the only one: the error on
/// stderr says it all).
struct Shown {
    code: u8,
    json: Option<serde_json::Value>,
    text: Option<String>,
}

fn status_one(settings: &Settings, store: &Store, mirrors: &[Mirror], many: bool) -> Shown {
    let place = store.place();
    // The place as a message may show it: a path is the user's, but may hold anything.
    let shown = printable(&place.to_string());
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
    located.insert("mirrors".into(), mirrors_json(mirrors));
    // The live daemon keeping this login, as its record in the lock file says.
    let keepers = store.keepers();
    located.insert("keeperPid".into(), json!(keepers.first()));
    let with_location = |rest: serde_json::Value| {
        let mut doc = located.clone();
        if let serde_json::Value::Object(rest) = rest {
            doc.extend(rest);
        }
        serde_json::Value::Object(doc)
    };
    let snapshot = match read_settled_blocking(store) {
        Ok(s) => s,
        Err(e) => {
            let code = report(&RefreshError::Store(e));
            // Among several logins, the broken one still gets its place in the list.
            return Shown {
                code,
                json: many.then(|| with_location(json!({"loggedIn": false, "error": code}))),
                text: many.then(|| {
                    format!(
                        "{:<15}{}\n{:<15}cannot be read (exit {code})\n",
                        "Store:", shown, "Login:"
                    )
                }),
            };
        }
    };
    let mode_ok = snapshot.mode & 0o077 == 0;
    let mode_text = format!("{:04o}", snapshot.mode);
    let mut out = String::new();
    let view = match snapshot.doc.oauth() {
        Ok(Some(v)) if !v.is_logged_out() => v,
        Ok(_) => {
            eprintln!(
                "claude-tokend: {shown}: no login there; a new login is needed: \
                 run `claude-tokend login` (or sign in with Claude Code)"
            );
            return Shown {
                code: exit::LOGIN_NEEDED,
                json: Some(with_location(json!({"loggedIn": false,
                                 "fileMode": mode_text, "fileModeOk": mode_ok}))),
                text: many.then(|| {
                    format!(
                        "{:<15}{}\n{:<15}none: a new login is needed\n",
                        "Store:", shown, "Login:"
                    )
                }),
            };
        }
        Err(_) => unreachable!("Credentials::parse validated the owned fields"),
    };
    let now = epoch_millis(SystemTime::now());
    let account = account(store, &view);
    let expired = view.expires_at.is_none_or(|at| at <= now);
    // No refresh token (an access-only copy, a long-lived token): nothing here can refresh it,
    // so it has no refresh time; it is used as it is until it expires.
    let access_only = view.usable_refresh_token().is_none();
    // The same due time `--once` and the daemon use: half the lifetime of a short grant this
    // program obtained (its record in the lock file), else the lead.
    let records = store.peek_records();
    let refresh_due = view.expires_at.filter(|_| !access_only).map(|_| {
        tokend_core::refresh::next_at(&view, records.grant.as_ref(), settings.refresh_before)
    });
    // When the token endpoint refused this very refresh token (this program's record, which
    // keeps it from being sent again): the login is lost until someone signs in, and "Refresh
    // due: now" would hide that.
    let refused_at = match (&records.refused, view.usable_refresh_token()) {
        (Some(r), Some(token)) if r.refuses(token) => Some(r.at),
        _ => None,
    };
    let doc = with_location(json!({
        "loggedIn": true,
        "accessToken": view.access_token.masked(),
        "refreshToken": view.refresh_token.as_ref().map(|t| t.masked()),
        "expiresAt": view.expires_at,
        "expiresAtLocal": view.expires_at.map(local_time),
        "expiresInSeconds": view.expires_at.map(|at| at.saturating_sub(now) / 1000),
        "expired": expired,
        "accessOnly": access_only,
        "refreshDueAt": refresh_due,
        "refreshRefusedAt": refused_at,
        "refreshTokenExpiresAt": view.refresh_token_expires_at,
        "refreshTokenExpiresAtLocal": view.refresh_token_expires_at.map(local_time),
        "scopes": view.scopes,
        "subscriptionType": view.subscription_type,
        "rateLimitTier": view.rate_limit_tier,
        "clientId": view.client_id,
        "email": account.as_ref().map(|a| a.email.clone()),
        "emailSource": account.as_ref().map(|a| a.source.name()),
        "fileMode": mode_text,
        "fileModeOk": mode_ok,
    }));
    {
        // Every value is escaped: most come from the file or a server (scopes, the plan, an
        // email, a path), and none may drive the terminal.
        let mut row = |k: &str, v: String| {
            let _ = writeln!(out, "{k:<15}{}", printable(&v));
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
                _ => "(none: access-only)".into(),
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
        if access_only {
            row(
                "Refresh due:",
                "never: access-only, it cannot be refreshed here (an access-only copy or a \
                 long-lived token); sign in again before it expires"
                    .into(),
            );
        } else if let Some(at) = refused_at {
            row(
                "Refresh due:",
                format!(
                    "never: the token endpoint refused this refresh token {}, and it is not \
                     sent again; sign in again (`claude-tokend login`, or Claude Code's /login)",
                    relative(at)
                ),
            );
        } else if let Some(due) = refresh_due {
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
        if let Some(a) = &account {
            row("Account:", a.describe());
        }
        row(
            "Kept by:",
            match keepers.as_slice() {
                [] => "no claude-tokend daemon is running for this login".to_owned(),
                [pid] => format!("the claude-tokend daemon with pid {pid}"),
                pids => format!(
                    "{} claude-tokend daemons (pids {}): one is enough",
                    pids.len(),
                    pids.iter()
                        .map(u32::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            },
        );
        for m in mirrors {
            row("Mirror:", describe_mirror(m));
        }
    }
    if let Some(at) = view.refresh_token_expires_at
        && at.saturating_sub(now) <= 3 * 86_400_000
    {
        eprintln!(
            "claude-tokend: warning: the login in {shown} itself ends {}; no refresh can extend \
             it: log in again before then (claude-tokend login)",
            when(at)
        );
    }
    if !mode_ok && store.kind() == Kind::File {
        eprintln!(
            "claude-tokend: warning: {shown} has mode {mode_text}; it should be {FILE_MODE:04o} \
             (run: chmod 600 {shown})"
        );
    }
    Shown {
        code: if expired { exit::FAILURE } else { exit::OK },
        json: Some(doc),
        text: Some(out),
    }
}

/// `"mirrors"` of a login's JSON: each mirror's directory and its file's modification time.
fn mirrors_json(mirrors: &[Mirror]) -> serde_json::Value {
    mirrors
        .iter()
        .map(|m| {
            let written = m
                .last_written()
                .map(|t| jiff::Timestamp::try_from(t).map(|t| t.to_string()).ok());
            json!({"path": m.dir().display().to_string(), "lastWritten": written.flatten()})
        })
        .collect()
}

/// A mirror's line in the text: its directory and when it was last written (or why it is not).
fn describe_mirror(m: &Mirror) -> String {
    let dir = m.dir().display();
    if m.holds_real_login() {
        return format!(
            "{dir} (its .credentials.json holds a real login with a refresh token, so it is \
             not written: move that file away, or give the mirror another directory)"
        );
    }
    match m.last_written() {
        Some(t) => {
            let ms = epoch_millis(t);
            format!("{dir} (written {}, {})", local_time(ms), relative(ms))
        }
        None => format!("{dir} (not written yet)"),
    }
}

/// The account `status` shows, and where its email comes from.
struct Account {
    email: String,
    source: EmailSource,
}

#[derive(Clone, Copy)]
enum EmailSource {
    /// The email this program's own `login` printed; the stored login descends from it.
    Login,
    /// Claude Code's config (`.claude.json`).
    ClaudeCode,
}

impl EmailSource {
    fn name(self) -> &'static str {
        match self {
            EmailSource::Login => "login",
            EmailSource::ClaudeCode => "claude-code",
        }
    }
}

impl Account {
    fn describe(&self) -> String {
        match self.source {
            EmailSource::Login => format!("{} (signed in with claude-tokend login)", self.email),
            EmailSource::ClaudeCode => {
                format!(
                    "{} (Claude Code's account, from its .claude.json)",
                    self.email
                )
            }
        }
    }
}

/// The stored login's account: the email this program's own `login` recorded in its lock file,
/// while the store still holds the refresh token the record follows (its own refreshes move it
/// on; anyone else's ends it); else Claude Code's. The lock file is only peeked at: `status`
/// takes no lock and creates nothing.
fn account(store: &Store, view: &OAuthView) -> Option<Account> {
    if let Some(ours) = store.peek_records().account
        && ours.matches(view.refresh_token.as_ref())
    {
        return Some(Account {
            email: ours.email,
            source: EmailSource::Login,
        });
    }
    claude_code_email(store).map(|email| Account {
        email,
        source: EmailSource::ClaudeCode,
    })
}

/// The signed-in account's email as Claude Code's own config records it.
/// The config belongs to the login's config directory: `~/.claude.json` for the default
/// `~/.claude`, else `<dir>/.claude.json` (as Claude Code finds it with `CLAUDE_CONFIG_DIR`). It
/// is only read, and anything odd about it just leaves the email out.
fn claude_code_email(store: &Store) -> Option<String> {
    let home = std::env::var_os("HOME");
    let dir = store.path().parent()?;
    let default_dir = home
        .as_ref()
        .map(|h| store::absolute_lexically(&std::path::Path::new(h).join(".claude")));
    let config_dir = (Some(dir) != default_dir.as_deref()).then(|| dir.as_os_str().to_os_string());
    tokend_core::profile::email_from_claude_config(config_dir, home)
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
