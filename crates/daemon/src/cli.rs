//! The command line: every flag, its environment variable and default, in one clap definition
//! (which the man page and completions are generated from). Parsing and checking settings here
//! means a bad value from a flag or from the environment fails the same way: exit 2, before
//! anything is read or sent. A bad value from the environment is reported under the variable's
//! name (see [`parse`]), and an empty `CLAUDE_TOKEND_*` variable counts as unset.

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::time::Duration;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::parser::ValueSource;
use clap::{
    ArgAction, ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum,
};
use tokend_core::settings::{Url, parse_endpoint_url, parse_refresh_lead, parse_retry_budget};

pub const DEFAULT_TOKEN_URL: &str = "https://platform.claude.com/v1/oauth/token";
/// Claude Code 2.1.332's authorize page (the older `https://claude.ai/oauth/authorize` also works).
pub const DEFAULT_AUTHORIZE_URL: &str = "https://claude.com/cai/oauth/authorize";
/// The API base `login` looks the account's profile up under, as Claude Code does.
pub const DEFAULT_API_URL: &str = "https://api.anthropic.com";
pub const DEFAULT_REDIRECT_URI: &str = "https://platform.claude.com/oauth/code/callback";
pub const DEFAULT_CLIENT_ID: &str = "9d1c250a-e61b-44d9-88ed-5944d1962f5e";
pub const DEFAULT_USER_AGENT: &str = concat!("claude-tokend/", env!("CARGO_PKG_VERSION"));

#[derive(Debug, Parser)]
#[command(
    name = "claude-tokend",
    version,
    about = "Keeps a Claude Code OAuth login alive: refreshes ~/.claude/.credentials.json ahead of expiry, \
             under a lock, atomically, losing nothing.",
    long_about = None,
    after_help = "With no command, runs the daemon in the foreground (what systemd and launchd start).\n\
                  Exit codes: 0 done, 1 other failure (status: token expired), 2 bad command line or setting,\n\
                  75 temporary failure (try again later), 77 a new login is needed, 78 credentials file missing or malformed."
)]
pub struct Cli {
    /// Refresh only if due (expiry within --refresh-before), then exit. Prints nothing on
    /// success, so cron mails only problems.
    #[arg(long)]
    pub once: bool,

    #[command(flatten)]
    pub settings: Settings,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Refresh now, even if the token is not due.
    Refresh,
    /// Show the login in the credentials file: masked tokens, expiry, scopes, plan.
    /// Exits 0 while the access token is valid, 1 once it has expired.
    Status {
        /// Print JSON (no secrets) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print a valid access token on stdout, for scripts, status bars and proxies: refreshed
    /// first (under the same locks as --once) when due, so they never refresh on their own.
    /// Prints nothing else on success; exit codes as --once.
    Token {
        /// Print {"accessToken":…,"expiresAt":…} instead of the bare token.
        #[arg(long)]
        json: bool,
    },
    /// Check why a login might be lost, or not used by Claude Code, and say what to do: one
    /// line per check (ok, warn or fail). Never refreshes, writes or prints a token.
    ///
    /// Checks: what shadows the stored login (CLAUDE_CODE_OAUTH_TOKEN, ANTHROPIC_API_KEY),
    /// which login Claude Code in this shell reads and whether the service keeps it, each
    /// login's store (there, readable, yours, mode 0600, writable directory) and the login in
    /// it (blanked, ended or ending, refused, expired), Claude Code's stale lock directories,
    /// who keeps each login fresh (the service, the live daemons), its mirrors (given the same
    /// --mirror flags), and the clock (one HEAD request to the token endpoint's host). Exits 0
    /// when no check fails (warnings allowed), 1 when one does.
    Doctor {
        /// Print {"checks":[{"login","check","result","detail","fix"}]} instead of text.
        #[arg(long)]
        json: bool,
        /// Send nothing: leave out the clock check (its one HEAD request).
        #[arg(long)]
        offline: bool,
    },
    /// Sign in (OAuth with PKCE) and save the login to the credentials file, keeping every
    /// other key in it. Prints the sign-in URL, then reads the code you paste (CODE#STATE).
    Login(LoginArgs),
    /// Remove the Claude login (claudeAiOauth) from the credentials file; other keys, such as
    /// MCP servers' tokens, stay. Asks first; without a terminal, needs --yes.
    Logout {
        /// Do not ask for confirmation.
        #[arg(short, long)]
        yes: bool,
    },
    /// Install, remove or inspect the user service that runs the daemon (systemd on Linux,
    /// launchd on macOS).
    Service {
        #[command(subcommand)]
        action: ServiceAction,
    },
    /// Print a shell completion script to stdout (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page, claude-tokend(1), as roff to stdout; with --dir, write it and one
    /// page per command (claude-tokend-service(1), ...) into that directory.
    Man {
        /// Write every page into this directory instead.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// Ask for a token that lives about a year (scope user:inference, expires_in 31536000).
    #[arg(long)]
    pub long_lived: bool,

    /// The scopes to ask for, space-separated [default: Claude Code's: org:create_api_key
    /// user:profile user:inference user:sessions:claude_code user:mcp_servers user:file_upload].
    #[arg(long, value_name = "SCOPES", value_parser = non_empty)]
    pub scope: Option<String>,

    /// Only print the URL; do not try to open a browser.
    #[arg(long)]
    pub no_browser: bool,

    /// Receive the code on http://localhost:PORT/callback (a browser on this machine) instead
    /// of pasting it.
    #[arg(long)]
    pub loopback: bool,
}

/// The `--store` setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreChoice {
    Auto,
    File,
    Keychain,
}

/// The `--notify` setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum NotifyChoice {
    Desktop,
}

/// A `--mirror DIR` on the command line, and the login it belongs to: the index in
/// [`Settings::login_flags`] of the nearest login flag before it (`None`: none was before it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MirrorFlag {
    pub login: Option<usize>,
    pub dir: PathBuf,
}

/// A login named on the command line, in the order given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LoginFlag {
    /// `--credentials PATH`: that file.
    Credentials(PathBuf),
    /// `--config-dir DIR`: Claude Code's login as with `CLAUDE_CONFIG_DIR=DIR`.
    ConfigDir(PathBuf),
}

#[derive(Debug, Args)]
pub struct Settings {
    /// A credentials file to keep fresh; repeat for several logins [default:
    /// $CLAUDE_SECURESTORAGE_CONFIG_DIR/.credentials.json (Claude Code's own variable; set but
    /// empty: ~/.claude), else $CLAUDE_CONFIG_DIR/.credentials.json, else
    /// ~/.claude/.credentials.json]
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        env = "CLAUDE_TOKEND_CREDENTIALS",
        action = ArgAction::Append
    )]
    pub credentials: Vec<PathBuf>,

    /// Claude Code's login in config directory DIR (as with CLAUDE_CONFIG_DIR=DIR: its file or
    /// its Keychain item); repeat for several logins.
    #[arg(long, global = true, value_name = "DIR", action = ArgAction::Append)]
    pub config_dir: Vec<PathBuf>,

    /// The logins named by --credentials and --config-dir on the command line, in order (empty:
    /// none was; then CLAUDE_TOKEND_CONFIG_DIRS or the default login applies).
    #[arg(skip)]
    pub login_flags: Vec<LoginFlag>,

    /// Keep an access-only copy of the login (its access token, never its refresh token) in
    /// DIR/.credentials.json, for Claude Code in a container or on another machine (mount DIR
    /// there and point CLAUDE_CONFIG_DIR at the mount); it belongs to the --config-dir or
    /// --credentials before it; repeat for several. Written by the daemon, --once and refresh;
    /// status lists it. CLAUDE_TOKEND_MIRRORS (a :-separated list) gives the mirrors of a
    /// single login.
    #[arg(long, global = true, value_name = "DIR", action = ArgAction::Append)]
    pub mirror: Vec<PathBuf>,

    /// The `--mirror` flags with the login each belongs to, in order.
    #[arg(skip)]
    pub mirror_flags: Vec<MirrorFlag>,

    /// Run this (with sh -c) with a login's access-only copy on stdin (never in arguments or
    /// the environment), to publish it elsewhere (ssh, a Kubernetes Secret): the daemon at
    /// start and after each change of the copy, --once and refresh after they obtained new
    /// tokens. CLAUDE_TOKEND_EVENT is update or logout (empty stdin), CLAUDE_TOKEND_LOGIN
    /// names the login.
    #[arg(long, global = true, value_name = "COMMAND", env = "CLAUDE_TOKEND_MIRROR_CMD",
          value_parser = non_empty)]
    pub mirror_cmd: Option<String>,

    /// CLAUDE_TOKEND_CREDENTIALS, when it (not a flag) set the credentials path.
    #[arg(skip)]
    pub credentials_env: Option<PathBuf>,

    /// Where the login is kept: `file`, `keychain` (macOS: the item Claude Code keeps there,
    /// through the `security` command), or `auto` (on macOS the Keychain item when it exists,
    /// else the file; elsewhere the file).
    #[arg(
        long,
        global = true,
        value_name = "STORE",
        env = "CLAUDE_TOKEND_STORE",
        default_value = "auto",
        value_enum
    )]
    pub store: StoreChoice,

    /// The OAuth token endpoint (https; http only to a loopback host).
    #[arg(long, global = true, value_name = "URL", env = "CLAUDE_TOKEND_TOKEN_URL",
          default_value = DEFAULT_TOKEN_URL, value_parser = parse_endpoint_url)]
    pub token_url: Url,

    /// The OAuth authorize page (login).
    #[arg(long, global = true, value_name = "URL", env = "CLAUDE_TOKEND_AUTHORIZE_URL",
          default_value = DEFAULT_AUTHORIZE_URL, value_parser = parse_endpoint_url)]
    pub authorize_url: Url,

    /// The API base the account's profile is read from after a login (its plan, its email).
    #[arg(long, global = true, value_name = "URL", env = "CLAUDE_TOKEND_API_URL",
          default_value = DEFAULT_API_URL, value_parser = parse_endpoint_url)]
    pub api_url: Url,

    /// The redirect URI of the paste flow (login).
    #[arg(long, global = true, value_name = "URL", env = "CLAUDE_TOKEND_REDIRECT_URI",
          default_value = DEFAULT_REDIRECT_URI, value_parser = parse_endpoint_url)]
    pub redirect_uri: Url,

    /// The OAuth client id, used when the credentials file names none.
    #[arg(long, global = true, value_name = "ID", env = "ANTHROPIC_CLIENT_ID",
          default_value = DEFAULT_CLIENT_ID, value_parser = client_id)]
    pub client_id: String,

    /// Refresh this long before the access token expires (like 90s, 15m, 1h; at most 4h).
    #[arg(long, global = true, value_name = "DURATION", env = "CLAUDE_TOKEND_REFRESH_BEFORE",
          default_value = "15m", value_parser = parse_refresh_lead)]
    pub refresh_before: Duration,

    /// The User-Agent header sent to the endpoints.
    #[arg(long, global = true, value_name = "STRING", env = "CLAUDE_TOKEND_USER_AGENT",
          default_value = DEFAULT_USER_AGENT, value_parser = header_value)]
    pub user_agent: String,

    /// How long --once and refresh keep retrying temporary failures before exiting 75 (at most 1d).
    #[arg(long, global = true, value_name = "DURATION", env = "CLAUDE_TOKEND_RETRY_BUDGET",
          default_value = "60s", value_parser = parse_retry_budget)]
    pub retry_budget: Duration,

    /// The daemon runs this (with sh -c) when a login needs a person: login-needed,
    /// login-expiring, refresh-failing, recovered; the event is in CLAUDE_TOKEND_EVENT,
    /// CLAUDE_TOKEND_LOGIN, CLAUDE_TOKEND_MESSAGE and CLAUDE_TOKEND_DEADLINE (never a token).
    #[arg(long, global = true, value_name = "COMMAND", env = "CLAUDE_TOKEND_NOTIFY_CMD",
          value_parser = non_empty)]
    pub notify_cmd: Option<String>,

    /// Also show those events as desktop notifications (notify-send on Linux, osascript on
    /// macOS, when installed).
    #[arg(
        long,
        global = true,
        value_name = "WHERE",
        env = "CLAUDE_TOKEND_NOTIFY",
        value_enum
    )]
    pub notify: Option<NotifyChoice>,

    /// More log output (-v info, -vv debug, -vvv trace). RUST_LOG, when set, wins.
    #[arg(short, long, global = true, action = ArgAction::Count)]
    pub verbose: u8,

    /// Less log output (-q warnings and errors only, -qq errors only).
    #[arg(short, long, global = true, action = ArgAction::Count, conflicts_with = "verbose")]
    pub quiet: u8,

    /// Where each setting read from a variable got its value this run (see [`Settings::origin`]).
    #[arg(skip)]
    pub origins: Vec<(String, Origin)>,
}

/// Where a setting's value came from, so a message names it the way the user gave it: a warning
/// about `CLAUDE_TOKEND_REFRESH_BEFORE=500ms` in a unit file must not send them looking for a
/// `--refresh-before` flag they never wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The flag, on the command line (its `--name`).
    Flag(String),
    /// The environment variable of that name.
    Variable(String),
    /// The built-in default (the flag's `--name`, for a message that says how to change it).
    Default(String),
}

impl Origin {
    /// The name to put in a message: `--refresh-before` or `CLAUDE_TOKEND_REFRESH_BEFORE`.
    pub fn name(&self) -> &str {
        match self {
            Origin::Flag(n) | Origin::Variable(n) | Origin::Default(n) => n,
        }
    }
}

impl Settings {
    /// Where the setting with clap id `id` (`refresh_before`, `client_id`, …) got its value.
    pub fn origin(&self, id: &str) -> Origin {
        self.origins
            .iter()
            .find(|(i, _)| i == id)
            .map(|(_, o)| o.clone())
            .unwrap_or_else(|| Origin::Default(format!("--{}", id.replace('_', "-"))))
    }
}

#[derive(Debug, Subcommand)]
pub enum ServiceAction {
    /// Write the user service for this binary and these settings.
    ///
    /// systemd: ~/.config/systemd/user/claude-tokend.service ($XDG_CONFIG_HOME is honoured);
    /// macOS: ~/Library/LaunchAgents/io.github.claude-tokend.plist. --credentials and
    /// CLAUDE_CONFIG_DIR are carried into it, as are the daemon's settings that differ from
    /// their defaults. A file edited by hand is not replaced without --force.
    Install(InstallArgs),
    /// Stop and disable the service, then remove the files `install` wrote.
    ///
    /// A file edited by hand is not removed without --force; a link is removed, never the file
    /// it points at.
    Uninstall(UninstallArgs),
    /// Show whether the service is installed and running.
    ///
    /// Exits 0 when it is running, 1 when it is not installed or not running, and 69 when the
    /// service manager cannot be asked (no user bus for systemctl --user, no systemctl).
    Status(ManagerArg),
}

#[derive(Debug, Args)]
pub struct InstallArgs {
    /// Also start it now and at every login (systemctl --user enable --now; launchctl bootstrap).
    #[arg(long)]
    pub now: bool,

    /// Replace service files that were edited by hand or not written by this command.
    #[arg(long)]
    pub force: bool,

    /// Also install the optional sandbox drop-in (systemd only: ProtectSystem=strict,
    /// ProtectHome=read-only, PrivateTmp; needs unprivileged user namespaces).
    #[arg(long)]
    pub sandbox: bool,

    #[command(flatten)]
    pub manager: ManagerArg,
}

#[derive(Debug, Args)]
pub struct UninstallArgs {
    /// Also remove service files that were edited by hand or not written by `service install`.
    #[arg(long)]
    pub force: bool,

    #[command(flatten)]
    pub manager: ManagerArg,
}

#[derive(Debug, Args)]
pub struct ManagerArg {
    /// The service manager to install for [default: launchd on macOS, systemd elsewhere].
    #[arg(long, value_enum, env = "CLAUDE_TOKEND_SERVICE_MANAGER", hide = true)]
    pub manager: Option<Manager>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Manager {
    Systemd,
    Launchd,
}

/// Parses the process's command line and environment into a [`Cli`], exiting 2 with a message on
/// a bad value: `Cli::parse()`, except for the environment. Clap on its own treats an empty
/// variable as a value and names the flag when a variable's value is bad; the contract wants
/// empty `CLAUDE_TOKEND_*` variables to count as unset and a bad value to be reported under the
/// variable's name. So before clap parses, every variable the definition reads is looked at:
/// empty ones are taken out of what clap sees, and the rest are checked with the argument's own
/// value parser; a bad one is taken out too and reported, under its name, only if the flag did
/// not override it. The environment itself is never changed.
pub fn parse() -> Cli {
    let mut cmd = Cli::command();
    let mut bad = Vec::new();
    for var in env_settings(&cmd, &[]) {
        let value = std::env::var_os(&var.name);
        let drop_env = match value {
            None => false,
            Some(v) if v.is_empty() => counts_as_unset_when_empty(&var.name),
            Some(v) => match check_value(&cmd, &var, &v) {
                Ok(()) => false,
                Err(message) => {
                    bad.push((var.clone(), v, message));
                    true
                }
            },
        };
        if drop_env {
            cmd = without_env(cmd, &var.path, &var.id);
        }
    }
    let mut matches = cmd
        .try_get_matches_from_mut(std::env::args_os())
        .unwrap_or_else(|e| e.exit());
    for (var, value, message) in bad {
        if let Some(m) = matches_at(&matches, &var.path)
            && m.value_source(&var.id) != Some(ValueSource::CommandLine)
        {
            cmd.error(
                ErrorKind::ValueValidation,
                format!(
                    "invalid value '{}' for {}: {message}",
                    value
                        .to_string_lossy()
                        .chars()
                        .map(|c| if c.is_control() {
                            c.escape_default().to_string()
                        } else {
                            c.to_string()
                        })
                        .collect::<String>(),
                    var.name
                ),
            )
            .exit();
        }
    }
    let (flags, mirrors) = login_flags(&matches);
    let origins = origins(&cmd, &matches);
    let mut cli =
        Cli::from_arg_matches_mut(&mut matches).unwrap_or_else(|e| e.format(&mut cmd).exit());
    cli.settings.mirror_flags = mirrors;
    // With no flag, a credentials path can only have come from CLAUDE_TOKEND_CREDENTIALS.
    cli.settings.credentials_env = if flags.is_empty() {
        cli.settings.credentials.first().cloned()
    } else {
        None
    };
    cli.settings.login_flags = flags;
    cli.settings.origins = origins;
    cli
}

/// Where each global setting that has a variable got its value, read off the innermost matches
/// (a global flag given after the command is recorded there).
fn origins(cmd: &clap::Command, matches: &ArgMatches) -> Vec<(String, Origin)> {
    let mut leaf = matches;
    while let Some((_, sub)) = leaf.subcommand() {
        leaf = sub;
    }
    env_settings(cmd, &[])
        .into_iter()
        .filter(|var| var.path.is_empty())
        .filter_map(|var| {
            let flag = format!("--{}", find_arg(cmd, &[], &var.id)?.get_long()?);
            let origin = match leaf.value_source(&var.id) {
                Some(ValueSource::CommandLine) => Origin::Flag(flag),
                Some(ValueSource::EnvVariable) => Origin::Variable(var.name),
                _ => Origin::Default(flag),
            };
            Some((var.id, origin))
        })
        .collect()
}

/// The `--credentials` and `--config-dir` flags given on the command line, in the order given,
/// wherever they stand (before or after the command: they are global), and the `--mirror`
/// flags with the login flag before each. A credentials path from CLAUDE_TOKEND_CREDENTIALS is
/// not a flag.
fn login_flags(matches: &ArgMatches) -> (Vec<LoginFlag>, Vec<MirrorFlag>) {
    let mut leaf = matches;
    while let Some((_, sub)) = leaf.subcommand() {
        leaf = sub;
    }
    let mut flags: Vec<(usize, LoginFlag)> = Vec::new();
    if leaf.value_source("credentials") == Some(ValueSource::CommandLine)
        && let (Some(at), Some(values)) = (
            leaf.indices_of("credentials"),
            leaf.get_many::<PathBuf>("credentials"),
        )
    {
        flags.extend(at.zip(values.map(|p| LoginFlag::Credentials(p.clone()))));
    }
    if let (Some(at), Some(values)) = (
        leaf.indices_of("config_dir"),
        leaf.get_many::<PathBuf>("config_dir"),
    ) {
        flags.extend(at.zip(values.map(|p| LoginFlag::ConfigDir(p.clone()))));
    }
    flags.sort_by_key(|(at, _)| *at);
    let mut mirrors = Vec::new();
    if let (Some(at), Some(values)) = (
        leaf.indices_of("mirror"),
        leaf.get_many::<PathBuf>("mirror"),
    ) {
        for (at, dir) in at.zip(values) {
            let login = flags.iter().rposition(|(f, _)| *f < at);
            mirrors.push((
                at,
                MirrorFlag {
                    login,
                    dir: dir.clone(),
                },
            ));
        }
    }
    mirrors.sort_by_key(|(at, _)| *at);
    (
        flags.into_iter().map(|(_, f)| f).collect(),
        mirrors.into_iter().map(|(_, m)| m).collect(),
    )
}

/// An argument the definition fills from an environment variable.
#[derive(Clone, Debug)]
struct EnvSetting {
    /// The subcommands leading to the argument (empty for the top level and global flags).
    path: Vec<String>,
    id: String,
    name: String,
}

/// Every argument with an `env`, in the command and its subcommands.
fn env_settings(cmd: &clap::Command, path: &[String]) -> Vec<EnvSetting> {
    let mut found: Vec<EnvSetting> = cmd
        .get_arguments()
        .filter_map(|a| {
            Some(EnvSetting {
                path: path.to_vec(),
                id: a.get_id().to_string(),
                name: a.get_env()?.to_string_lossy().into_owned(),
            })
        })
        .collect();
    for sub in cmd.get_subcommands() {
        let mut deeper = path.to_vec();
        deeper.push(sub.get_name().to_owned());
        found.extend(env_settings(sub, &deeper));
    }
    found
}

/// The contract: an empty `CLAUDE_TOKEND_*` variable counts as unset; Claude Code's own variables
/// keep Claude Code's meaning. `ANTHROPIC_CLIENT_ID` is Claude Code's, but an empty client id
/// means nothing to anyone (the server would refuse it), so an empty one counts as unset as well,
/// the same reading as a shell's `VAR=`: "not this".
fn counts_as_unset_when_empty(name: &str) -> bool {
    name.starts_with("CLAUDE_TOKEND_") || name == "ANTHROPIC_CLIENT_ID"
}

/// Checks a variable's value with its argument's own value parser (run on a one-argument command,
/// as clap exposes no other way to call one), returning the parser's message.
fn check_value(cmd: &clap::Command, var: &EnvSetting, value: &OsStr) -> Result<(), String> {
    let Some(arg) = find_arg(cmd, &var.path, &var.id) else {
        return Ok(());
    };
    let probe = clap::Command::new("env").no_binary_name(true).arg(
        clap::Arg::new("value")
            .num_args(1)
            .allow_hyphen_values(true)
            .value_parser(arg.get_value_parser().clone()),
    );
    let Err(e) = probe.try_get_matches_from([OsString::from(value)]) else {
        return Ok(());
    };
    if let Some(source) = std::error::Error::source(&e) {
        return Err(source.to_string());
    }
    if let Some(ContextValue::Strings(valid)) = e.get(ContextKind::ValidValue) {
        return Err(format!("use one of {}", valid.join(", ")));
    }
    Err(e.kind().as_str().unwrap_or("not a valid value").to_owned())
}

fn find_arg<'c>(cmd: &'c clap::Command, path: &[String], id: &str) -> Option<&'c clap::Arg> {
    match path.split_first() {
        None => cmd.get_arguments().find(|a| a.get_id() == id),
        Some((first, rest)) => find_arg(cmd.find_subcommand(first)?, rest, id),
    }
}

/// The command with the argument's `env` taken away: clap no longer reads that variable.
fn without_env(cmd: clap::Command, path: &[String], id: &str) -> clap::Command {
    let id = id.to_owned();
    match path.split_first() {
        None => cmd.mut_arg(id, |a| a.env(None)),
        Some((first, rest)) => {
            let rest = rest.to_vec();
            cmd.mut_subcommand(first, move |sub| without_env(sub, &rest, &id))
        }
    }
}

/// The matches of the subcommand at `path`, if that subcommand was the one run.
fn matches_at<'m>(matches: &'m ArgMatches, path: &[String]) -> Option<&'m ArgMatches> {
    match path.split_first() {
        None => Some(matches),
        Some((first, rest)) => matches_at(matches.subcommand_matches(first)?, rest),
    }
}

/// A value sent as an HTTP header (the User-Agent): not empty, and no control character but tab.
/// A newline or a NUL would make every request fail to build, and the daemon would give up
/// refreshing hours later instead of refusing the setting now.
fn header_value(s: &str) -> Result<String, String> {
    let t = non_empty(s)?;
    match t.chars().find(|c| c.is_control() && *c != '\t') {
        Some(c) => Err(format!(
            "contains the control character {c:?}; an HTTP header cannot carry it"
        )),
        None => Ok(t),
    }
}

/// An OAuth client id: not empty, no control character. It is sent in JSON and in the authorize
/// URL, stored with a login, and named in messages, where a control character would reach the
/// terminal; no server issues one.
fn client_id(s: &str) -> Result<String, String> {
    let t = non_empty(s)?;
    match t.chars().find(|c| c.is_control()) {
        Some(c) => Err(format!("contains the control character {c:?}")),
        None => Ok(t),
    }
}

fn non_empty(s: &str) -> Result<String, String> {
    let t = s.trim();
    if t.is_empty() {
        Err("must not be empty".into())
    } else {
        Ok(t.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
