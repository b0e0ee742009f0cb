//! `claude-tokend service install|uninstall|status`: the daemon as a per-user service, under
//! systemd (`systemctl --user`) or launchd (a LaunchAgent). This module owns rendering the unit
//! and the agent from the files in `systemd/` and `launchd/` (embedded at build time, so the
//! repository's files are the one source of truth), writing them where the service manager looks,
//! and driving the service manager. It prints every step, because a user who can see the
//! commands can repeat, undo or debug them by hand.
//!
//! The manager is chosen by the target OS; `CLAUDE_TOKEND_SERVICE_MANAGER` (or the hidden
//! `--manager`) overrides it, so both code paths run, and are tested, on any Unix.

use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::process::{Command as Process, Stdio};
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use tokend_core::settings::parse_endpoint_url;
use tokend_core::store;

use crate::cli::{DEFAULT_CLIENT_ID, DEFAULT_TOKEN_URL, DEFAULT_USER_AGENT, Settings};
use crate::exit;

/// The systemd user unit, as shipped in `systemd/`.
pub const UNIT_TEMPLATE: &str = include_str!("../../../systemd/claude-tokend.service");
/// The optional sandboxing drop-in, as shipped in `systemd/`.
pub const SANDBOX_TEMPLATE: &str = include_str!("../../../systemd/claude-tokend-sandbox.conf");
/// The launchd agent, as shipped in `launchd/`.
pub const AGENT_TEMPLATE: &str = include_str!("../../../launchd/io.github.claude-tokend.plist");

/// The systemd unit's name.
pub const UNIT: &str = "claude-tokend.service";
/// The launchd label, which also names the plist file.
pub const LABEL: &str = "io.github.claude-tokend";
/// The drop-in's file name inside `claude-tokend.service.d/`.
const SANDBOX_FILE: &str = "sandbox.conf";

// The template lines rendering replaces or appends after. The unit tests check each is present
// exactly once, so an edit to a template that breaks rendering fails the build's tests.
const UNIT_EXEC_LINE: &str = "ExecStart=%h/.cargo/bin/claude-tokend";
const UNIT_ENV_MARK: &str = "# Settings from `claude-tokend service install`";
const SANDBOX_PATHS_LINE: &str = "ReadWritePaths=%h";
const AGENT_PROGRAM: &str = "@PROGRAM@";
const AGENT_HOME: &str = "@HOME@";
const AGENT_ENV_MARK: &str = "<!-- @ENVIRONMENT@ -->";

/// What `--refresh-before` defaults to in `cli.rs`; a unit test keeps the two in step.
const DEFAULT_REFRESH_BEFORE: Duration = Duration::from_secs(15 * 60);

/// Marks files this command wrote, with a digest of the rest of the file, so a reinstall can
/// replace its own earlier output (after an upgrade, or a moved binary) but never a hand edit.
const DIGEST_TAG: &str = "claude-tokend-digest: ";

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
    Uninstall(ManagerArg),
    /// Show whether the service is installed and running.
    ///
    /// Exits 0 when it is running, 1 when it is not installed, not running, or the service
    /// manager cannot be asked.
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

impl ManagerArg {
    fn resolve(&self) -> Manager {
        self.manager.unwrap_or(if cfg!(target_os = "macos") {
            Manager::Launchd
        } else {
            Manager::Systemd
        })
    }
}

pub fn run(settings: &Settings, action: &ServiceAction) -> u8 {
    let result = match action {
        ServiceAction::Install(args) => {
            let manager = args.manager.resolve();
            if args.sandbox && manager != Manager::Systemd {
                eprintln!(
                    "claude-tokend: --sandbox is a systemd drop-in; launchd has no equivalent"
                );
                return exit::USAGE;
            }
            Home::from_env().and_then(|home| install(settings, args, manager, &home))
        }
        ServiceAction::Uninstall(m) => Home::from_env().and_then(|home| match m.resolve() {
            Manager::Systemd => uninstall_systemd(&home),
            Manager::Launchd => uninstall_launchd(&home),
        }),
        ServiceAction::Status(m) => Home::from_env().and_then(|home| match m.resolve() {
            Manager::Systemd => status_systemd(&home),
            Manager::Launchd => status_launchd(&home),
        }),
    };
    match result {
        Ok(()) => exit::OK,
        Err(code) => code,
    }
}

/// Where the service files go, from `HOME` and `XDG_CONFIG_HOME`.
struct Home {
    home: PathBuf,
    /// `$XDG_CONFIG_HOME`, else `~/.config` (a relative `XDG_CONFIG_HOME` is ignored, as the
    /// XDG spec and systemd do).
    config: PathBuf,
}

impl Home {
    fn from_env() -> Result<Home, u8> {
        let home = match std::env::var_os("HOME").map(PathBuf::from) {
            Some(h) if h.is_absolute() => h,
            _ => {
                eprintln!(
                    "claude-tokend: HOME is not set to an absolute path; cannot tell where the service files go"
                );
                return Err(exit::USAGE);
            }
        };
        let config = std::env::var_os("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .unwrap_or_else(|| home.join(".config"));
        Ok(Home { home, config })
    }

    fn unit_dir(&self) -> PathBuf {
        self.config.join("systemd").join("user")
    }

    fn unit_path(&self) -> PathBuf {
        self.unit_dir().join(UNIT)
    }

    fn dropin_dir(&self) -> PathBuf {
        self.unit_dir().join(format!("{UNIT}.d"))
    }

    fn sandbox_path(&self) -> PathBuf {
        self.dropin_dir().join(SANDBOX_FILE)
    }

    fn agent_path(&self) -> PathBuf {
        self.home
            .join("Library")
            .join("LaunchAgents")
            .join(format!("{LABEL}.plist"))
    }

    fn log_path(&self) -> PathBuf {
        self.home
            .join("Library")
            .join("Logs")
            .join("claude-tokend.log")
    }
}

// ---------------------------------------------------------------------------------------------
// install

fn install(
    settings: &Settings,
    args: &InstallArgs,
    manager: Manager,
    home: &Home,
) -> Result<(), u8> {
    let program = program_path()?;
    let env = carried_settings(settings)?;
    let mut files = Vec::new();
    match manager {
        Manager::Systemd => {
            files.push(Planned::new(
                home.unit_path(),
                render_unit(&program, &env),
                Syntax::Hash,
            ));
            if args.sandbox {
                let dirs = writable_dirs(settings, home)?;
                files.push(Planned::new(
                    home.sandbox_path(),
                    render_sandbox(&dirs),
                    Syntax::Hash,
                ));
            }
        }
        Manager::Launchd => files.push(Planned::new(
            home.agent_path(),
            render_agent(&program, &home.home, &env),
            Syntax::Xml,
        )),
    }
    let files: Vec<Planned> = files
        .into_iter()
        .map(|f| f.and_then(|f| f.compare()))
        .collect::<Result<_, _>>()?;

    // Nothing is written unless everything may be: a half-done install is harder to reason about.
    let refused: Vec<&Planned> = files
        .iter()
        .filter(|f| f.existing == Existing::Edited)
        .collect();
    if !refused.is_empty() && !args.force {
        for f in &refused {
            eprintln!(
                "claude-tokend: {} exists and was edited by hand (or not written by `claude-tokend service install`); \
                 not replacing it.",
                f.path.display()
            );
        }
        eprintln!(
            "claude-tokend: to replace it with a fresh copy (your edits are lost), rerun with --force{}",
            if manager == Manager::Systemd {
                "; keep your own settings in a drop-in (`systemctl --user edit claude-tokend`), which survives reinstalls"
            } else {
                ""
            }
        );
        return Err(exit::FAILURE);
    }

    println!("Service program: {}", program.display());
    if env.is_empty() {
        println!("Settings: the defaults (no flags or variables to carry into the service)");
    } else {
        for (k, v) in &env {
            println!("Setting:  {k}={v}");
        }
    }
    for f in &files {
        match f.existing {
            Existing::Same => println!("Unchanged: {}", f.path.display()),
            Existing::Absent => {
                f.write()?;
                println!("Wrote: {}", f.path.display());
            }
            Existing::Ours | Existing::Edited => {
                f.write()?;
                println!("Replaced: {}", f.path.display());
                // A reinstall without the flags of the first one drops its settings: show it.
                let old = f.old.as_deref().unwrap_or_default();
                for (sign, line) in changed_lines(old, &f.content) {
                    println!("  {sign} {line}");
                }
            }
        }
    }
    let changed = files.iter().any(|f| f.existing != Existing::Same);
    // A service installed before may be running on the old files; a first install's is not.
    let restart = changed && files.iter().any(|f| f.existing != Existing::Absent);
    match manager {
        Manager::Systemd => finish_install_systemd(home, args, restart),
        Manager::Launchd => finish_install_launchd(home, args, changed),
    }
}

fn finish_install_systemd(home: &Home, args: &InstallArgs, restart: bool) -> Result<(), u8> {
    if !args.sandbox && home.sandbox_path().exists() {
        println!(
            "Kept: {} (the sandbox drop-in from an earlier install; `service uninstall` removes it)",
            home.sandbox_path().display()
        );
    }
    let unit_path = home.unit_path();
    let hint = format!(
        "the unit file {} is in place; `systemctl --user` needs your user's systemd manager \
         (over ssh or in a container it may not be running: `loginctl enable-linger $USER`, then log in again)",
        unit_path.display()
    );
    if args.now {
        systemctl(&["daemon-reload"], &hint)?;
        systemctl(&["enable", "--now", UNIT], &hint)?;
        if restart {
            // `enable --now` leaves a running service alone; it must restart to run the new files.
            systemctl(&["try-restart", UNIT], &hint)?;
        }
        println!("claude-tokend is enabled and started; it starts again at every login.");
    } else {
        println!("To start it now and at every login:");
        println!("  systemctl --user daemon-reload");
        println!("  systemctl --user enable --now {UNIT}");
        if restart {
            println!(
                "(Already running? `systemctl --user restart {UNIT}` makes it use the new file.)"
            );
        }
    }
    println!(
        "To keep it running while you are logged out (a server, ssh sessions): loginctl enable-linger $USER"
    );
    println!("Status: claude-tokend service status");
    println!("Logs:   journalctl --user -u claude-tokend -f");
    Ok(())
}

fn finish_install_launchd(home: &Home, args: &InstallArgs, changed: bool) -> Result<(), u8> {
    let logs = home.log_path();
    // launchd creates the log file but not its directory.
    if let Some(dir) = logs.parent()
        && let Err(e) = std::fs::create_dir_all(dir)
    {
        eprintln!("claude-tokend: cannot create {}: {e}", dir.display());
        return Err(exit::FAILURE);
    }
    let domain = gui_domain();
    let target = format!("{domain}/{LABEL}");
    let agent = home.agent_path();
    let hint = format!(
        "the agent file {} is in place, and launchd loads it at your next login (over ssh with \
         nobody logged in at the screen there is no gui domain to load it into now)",
        agent.display()
    );
    if args.now {
        let agent_arg = agent.as_os_str();
        if launchctl_probe(&target)? {
            if changed {
                // launchd keeps the definition it loaded; only a bootout and a bootstrap read the new one.
                launchctl(&[OsStr::new("bootout"), OsStr::new(&target)], &hint)?;
                launchctl(
                    &[OsStr::new("bootstrap"), OsStr::new(&domain), agent_arg],
                    &hint,
                )?;
            } else {
                // Loaded already; start it if it is not running (no -k: a running one is left alone).
                launchctl(&[OsStr::new("kickstart"), OsStr::new(&target)], &hint)?;
            }
        } else {
            launchctl(
                &[OsStr::new("bootstrap"), OsStr::new(&domain), agent_arg],
                &hint,
            )?;
        }
        println!("claude-tokend is loaded and started; it starts again at every login.");
    } else {
        println!("To start it now (it starts by itself at every login from now on):");
        println!(
            "  launchctl bootstrap {domain} {}",
            shell_quote(&agent.to_string_lossy())
        );
        if changed {
            println!(
                "(Already loaded? `launchctl bootout {target}` first, so launchd reads the new file.)"
            );
        }
    }
    println!("Status: claude-tokend service status");
    println!("Logs:   tail -f {}", shell_quote(&logs.to_string_lossy()));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// uninstall and status

fn uninstall_systemd(home: &Home) -> Result<(), u8> {
    let unit_path = home.unit_path();
    let sandbox = home.sandbox_path();
    if !unit_path.exists() && !sandbox.exists() {
        println!("Nothing to remove: {} does not exist.", unit_path.display());
        return Ok(());
    }
    if unit_path.exists() {
        let hint = format!(
            "nothing was removed; to remove it without the service manager, delete {} \
             (and {}) and run `systemctl --user daemon-reload` when it is running",
            unit_path.display(),
            home.dropin_dir().display()
        );
        systemctl(&["disable", "--now", UNIT], &hint)?;
    }
    for path in [&unit_path, &sandbox] {
        remove_file(path)?;
    }
    // Only our own drop-in is ours to remove; `systemctl --user edit` ones are the user's.
    let dropins = home.dropin_dir();
    if std::fs::remove_dir(&dropins).is_err() && dropins.exists() {
        println!(
            "Kept: {} (drop-ins that `service install` did not write)",
            dropins.display()
        );
    }
    systemctl(
        &["daemon-reload"],
        "the files are removed; systemd forgets the unit at its next reload",
    )?;
    println!("claude-tokend is stopped, disabled and uninstalled.");
    Ok(())
}

fn uninstall_launchd(home: &Home) -> Result<(), u8> {
    let agent = home.agent_path();
    let target = format!("{}/{LABEL}", gui_domain());
    let loaded = launchctl_probe(&target)?;
    if !agent.exists() && !loaded {
        println!("Nothing to remove: {} does not exist.", agent.display());
        return Ok(());
    }
    if loaded {
        let hint = format!("nothing was removed; the agent file is {}", agent.display());
        launchctl(&[OsStr::new("bootout"), OsStr::new(&target)], &hint)?;
    }
    remove_file(&agent)?;
    println!(
        "claude-tokend is stopped and uninstalled (its log, {}, is kept).",
        home.log_path().display()
    );
    Ok(())
}

fn status_systemd(home: &Home) -> Result<(), u8> {
    let unit_path = home.unit_path();
    let Some(state) = describe_file(&unit_path)? else {
        println!("Unit file: {} (not installed)", unit_path.display());
        println!("Install:   claude-tokend service install --now");
        return Err(exit::FAILURE);
    };
    println!("Unit file: {} ({state})", unit_path.display());
    if let Some(state) = describe_file(&home.sandbox_path())? {
        println!("Sandbox:   {} ({state})", home.sandbox_path().display());
    }
    let args = ["--user", "status", "--no-pager", UNIT];
    println!("Running: systemctl {}", args.join(" "));
    let ok = match Process::new("systemctl").args(args).status() {
        Ok(s) if s.success() => true,
        // systemctl status: 3 = not running (stopped or failed), 4 = unknown unit.
        Ok(s) => {
            eprintln!("claude-tokend: the service is not running ({s} from systemctl status)");
            false
        }
        Err(e) => {
            eprintln!("claude-tokend: cannot run systemctl: {e}");
            false
        }
    };
    println!("Logs:      journalctl --user -u claude-tokend -f");
    if ok { Ok(()) } else { Err(exit::FAILURE) }
}

fn status_launchd(home: &Home) -> Result<(), u8> {
    let agent = home.agent_path();
    let Some(state) = describe_file(&agent)? else {
        println!("Agent file: {} (not installed)", agent.display());
        println!("Install:    claude-tokend service install --now");
        return Err(exit::FAILURE);
    };
    println!("Agent file: {} ({state})", agent.display());
    let target = format!("{}/{LABEL}", gui_domain());
    println!("Running: launchctl print {target}");
    let ok = match Process::new("launchctl").args(["print", &target]).status() {
        Ok(s) if s.success() => true,
        Ok(s) => {
            eprintln!("claude-tokend: the agent is not loaded ({s} from launchctl print)");
            false
        }
        Err(e) => {
            eprintln!("claude-tokend: cannot run launchctl: {e}");
            false
        }
    };
    println!(
        "Logs:       tail -f {}",
        shell_quote(&home.log_path().to_string_lossy())
    );
    if ok { Ok(()) } else { Err(exit::FAILURE) }
}

/// `installed`, `installed, edited by hand`, or `None` when the file is absent.
fn describe_file(path: &Path) -> Result<Option<&'static str>, u8> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(match digest_state(&text) {
            Existing::Ours => "installed by `claude-tokend service install`",
            _ => "installed; edited by hand or not written by `claude-tokend service install`",
        })),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => {
            eprintln!("claude-tokend: cannot read {}: {e}", path.display());
            Err(exit::FAILURE)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// what goes into the files

/// The running binary, which is what the service will run. A path inside a cargo build directory
/// works but moves with the next `cargo clean`, so it earns a note.
fn program_path() -> Result<PathBuf, u8> {
    let program = std::env::current_exe().map_err(|e| {
        eprintln!("claude-tokend: cannot tell where this program is: {e}");
        exit::FAILURE
    })?;
    let parts: Vec<&OsStr> = program.iter().collect();
    let in_build_dir = parts
        .windows(2)
        .any(|w| w[0] == "target" && (w[1] == "debug" || w[1] == "release"));
    if in_build_dir {
        eprintln!(
            "claude-tokend: note: the service will run {}, inside a cargo build directory; for a path that \
             stays put, `cargo install --locked --path crates/daemon` and run `~/.cargo/bin/claude-tokend service install`",
            program.display()
        );
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        eprintln!(
            "claude-tokend: note: running as root installs the service for root, not for your own user"
        );
    }
    Ok(program)
}

/// The settings the service must see to do what this command line would do: the credentials
/// location (made absolute: the service does not run in this directory), and every setting the
/// daemon uses that differs from its default. Defaults are left out, so a later release's new
/// default reaches the service.
fn carried_settings(settings: &Settings) -> Result<Vec<(&'static str, String)>, u8> {
    let mut env = Vec::new();
    if let Some(path) = settings
        .credentials
        .as_deref()
        .filter(|p| !p.as_os_str().is_empty())
    {
        env.push(("CLAUDE_TOKEND_CREDENTIALS", absolute_utf8(path)?));
    }
    if let Some(dir) = std::env::var_os("CLAUDE_CONFIG_DIR").filter(|d| !d.is_empty()) {
        env.push(("CLAUDE_CONFIG_DIR", absolute_utf8(Path::new(&dir))?));
    }
    let default_url =
        parse_endpoint_url(DEFAULT_TOKEN_URL).expect("the default token URL is valid");
    if settings.token_url != default_url {
        env.push(("CLAUDE_TOKEND_TOKEN_URL", settings.token_url.to_string()));
    }
    if settings.client_id != DEFAULT_CLIENT_ID {
        env.push(("ANTHROPIC_CLIENT_ID", settings.client_id.clone()));
    }
    if settings.refresh_before != DEFAULT_REFRESH_BEFORE {
        env.push((
            "CLAUDE_TOKEND_REFRESH_BEFORE",
            duration_setting(settings.refresh_before),
        ));
    }
    if settings.user_agent != DEFAULT_USER_AGENT {
        env.push(("CLAUDE_TOKEND_USER_AGENT", settings.user_agent.clone()));
    }
    for (k, v) in &env {
        check_value(k, v)?;
    }
    Ok(env)
}

/// A duration as `parse_duration` reads it back exactly, in the largest unit that divides it.
fn duration_setting(d: Duration) -> String {
    let secs = d.as_secs();
    match (d.subsec_nanos(), secs) {
        (0, s) if s > 0 && s % 3600 == 0 => format!("{}h", s / 3600),
        (0, s) if s > 0 && s % 60 == 0 => format!("{}m", s / 60),
        (0, s) => format!("{s}s"),
        _ => format!("{}ms", d.as_millis()),
    }
}

fn absolute_utf8(path: &Path) -> Result<String, u8> {
    let abs = std::path::absolute(path).map_err(|e| {
        eprintln!(
            "claude-tokend: cannot make {} absolute: {e}",
            path.display()
        );
        exit::USAGE
    })?;
    utf8(&abs)
}

fn utf8(path: &Path) -> Result<String, u8> {
    path.to_str().map(str::to_owned).ok_or_else(|| {
        eprintln!(
            "claude-tokend: {} is not valid UTF-8, which service files cannot hold",
            path.display()
        );
        exit::USAGE
    })
}

/// Characters neither file format can carry safely. Control characters would end a line of a
/// unit or be refused by the XML parser; `"` and `\` would need systemd's own escaping rules,
/// which differ between directives, and no sane path needs them.
fn check_value(what: &str, value: &str) -> Result<(), u8> {
    if let Some(c) = value
        .chars()
        .find(|&c| c.is_control() || c == '"' || c == '\\')
    {
        eprintln!(
            "claude-tokend: {what} ({value:?}) contains {c:?}, which cannot be written into a service file"
        );
        return Err(exit::USAGE);
    }
    Ok(())
}

/// The directories the daemon writes in, for the sandbox's `ReadWritePaths=`: the credentials
/// file's directory (temp files, `.credentials.json.lock`), the directory that holds it
/// (Claude Code's lock directory `<config dir>.lock` is made there), and, for a symlinked file,
/// the directory of the file it points at. A directory inside another on the list is dropped.
fn writable_dirs(settings: &Settings, home: &Home) -> Result<Vec<String>, u8> {
    let env = store::LocateEnv {
        home: Some(OsString::from(home.home.as_os_str())),
        ..store::LocateEnv::from_process()
    };
    let (path, _) = store::locate(settings.credentials.as_deref(), &env).map_err(|e| {
        eprintln!("claude-tokend: {e}");
        exit::USAGE
    })?;
    let path = PathBuf::from(absolute_utf8(&path)?);
    let mut dirs: Vec<PathBuf> = Vec::new();
    let config_dir = parent(&path);
    dirs.push(parent(&config_dir));
    dirs.push(config_dir);
    if let Ok(target) = store::resolve_symlinks(&path)
        && target != path
    {
        dirs.push(parent(&PathBuf::from(absolute_utf8(&target)?)));
    }
    let dirs: Vec<PathBuf> = dirs.iter().map(|d| normalize(d)).collect();
    let mut kept: Vec<String> = Vec::new();
    for (i, d) in dirs.iter().enumerate() {
        let covered = dirs
            .iter()
            .enumerate()
            .any(|(j, other)| j != i && d.starts_with(other) && (d != other || j < i));
        if !covered {
            let s = utf8(d)?;
            check_value("a directory the daemon writes in", &s)?;
            kept.push(s);
        }
    }
    Ok(kept)
}

fn parent(path: &Path) -> PathBuf {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("/"))
        .to_path_buf()
}

/// Drops `.` and resolves `..` lexically (the path is absolute and not yet followed through
/// links, which is what the daemon sees too).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// The unit: the template with `ExecStart=` pointing at `program` and one `Environment=` line
/// per carried setting.
fn render_unit(program: &Path, env: &[(&str, String)]) -> Result<String, u8> {
    let program = utf8(program)?;
    check_value("the program's path", &program)?;
    let mut out = String::with_capacity(UNIT_TEMPLATE.len() + 256);
    for line in UNIT_TEMPLATE.lines() {
        if line == UNIT_EXEC_LINE {
            writeln!(out, "ExecStart={}", systemd_word(&program)).expect("String");
            continue;
        }
        out.push_str(line);
        out.push('\n');
        if line.starts_with(UNIT_ENV_MARK) {
            for (k, v) in env {
                writeln!(out, "Environment={}", systemd_word(&format!("{k}={v}"))).expect("String");
            }
        }
    }
    Ok(out)
}

/// The sandbox drop-in with `ReadWritePaths=` listing `dirs`. Each is prefixed with `-`, so a
/// directory that does not exist yet (no login yet) does not stop the service from starting.
fn render_sandbox(dirs: &[String]) -> Result<String, u8> {
    let list: Vec<String> = dirs
        .iter()
        .map(|d| systemd_word(&format!("-{d}")))
        .collect();
    let mut out = String::with_capacity(SANDBOX_TEMPLATE.len() + 128);
    for line in SANDBOX_TEMPLATE.lines() {
        if line == SANDBOX_PATHS_LINE {
            writeln!(out, "ReadWritePaths={}", list.join(" ")).expect("String");
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    Ok(out)
}

/// The agent: the template with the program and home filled in and the carried settings added
/// to `EnvironmentVariables`.
fn render_agent(program: &Path, home: &Path, env: &[(&str, String)]) -> Result<String, u8> {
    let program = utf8(program)?;
    let home = utf8(home)?;
    check_value("the program's path", &program)?;
    check_value("HOME", &home)?;
    let mut out = String::with_capacity(AGENT_TEMPLATE.len() + 256);
    for line in AGENT_TEMPLATE.lines() {
        if line.trim() == AGENT_ENV_MARK {
            let indent = &line[..line.len() - line.trim_start().len()];
            for (k, v) in env {
                writeln!(out, "{indent}<key>{}</key>", xml_escape(k)).expect("String");
                writeln!(out, "{indent}<string>{}</string>", xml_escape(v)).expect("String");
            }
            continue;
        }
        let line = line
            .replace(AGENT_PROGRAM, &xml_escape(&program))
            .replace(AGENT_HOME, &xml_escape(&home));
        out.push_str(&line);
        out.push('\n');
    }
    Ok(out)
}

/// One word of a unit file: `%` doubled (systemd specifiers), quoted when it holds anything but
/// plain path characters. `check_value` has already refused `"`, `\` and control characters.
fn systemd_word(s: &str) -> String {
    let s = s.replace('%', "%%");
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+,:@=%".contains(c));
    if plain { s } else { format!("\"{s}\"") }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A command line as the user would type it.
fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+,:@=%".contains(c))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

// ---------------------------------------------------------------------------------------------
// the files on disk

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Syntax {
    /// `#` comments: systemd units and drop-ins.
    Hash,
    /// XML comments after the `<?xml …?>` line: plists.
    Xml,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Existing {
    Absent,
    /// Byte for byte what would be written.
    Same,
    /// Written by an earlier install and not edited since: safe to replace.
    Ours,
    /// Edited by hand, or not ours at all: replaced only with `--force`.
    Edited,
}

struct Planned {
    path: PathBuf,
    content: String,
    existing: Existing,
    /// What the file held before, when it held something else.
    old: Option<String>,
}

impl Planned {
    fn new(path: PathBuf, body: Result<String, u8>, syntax: Syntax) -> Result<Planned, u8> {
        Ok(Planned {
            path,
            content: with_digest(&body?, syntax),
            existing: Existing::Absent,
            old: None,
        })
    }

    fn compare(mut self) -> Result<Planned, u8> {
        self.existing = match std::fs::read_to_string(&self.path) {
            Ok(old) if old == self.content => Existing::Same,
            Ok(old) => {
                let state = digest_state(&old);
                self.old = Some(old);
                state
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Existing::Absent,
            // Not UTF-8: certainly not ours.
            Err(e) if e.kind() == io::ErrorKind::InvalidData => Existing::Edited,
            Err(e) => {
                eprintln!("claude-tokend: cannot read {}: {e}", self.path.display());
                return Err(exit::FAILURE);
            }
        };
        Ok(self)
    }

    /// Writes through a temp file and a rename, so the service manager never reads half a file.
    fn write(&self) -> Result<(), u8> {
        let fail = |what: &str, e: io::Error| {
            eprintln!("claude-tokend: cannot {what} {}: {e}", self.path.display());
            exit::FAILURE
        };
        let dir = parent(&self.path);
        std::fs::create_dir_all(&dir).map_err(|e| fail("create the directory of", e))?;
        let mut name = OsString::from(".");
        name.push(self.path.file_name().unwrap_or_default());
        name.push(format!(".tmp{}", std::process::id()));
        let tmp = dir.join(name);
        let result =
            std::fs::write(&tmp, &self.content).and_then(|()| std::fs::rename(&tmp, &self.path));
        if let Err(e) = result {
            let _ = std::fs::remove_file(&tmp);
            return Err(fail("write", e));
        }
        Ok(())
    }
}

/// The lines that differ between two versions of a file, comments and blank lines aside:
/// `-` for lines only in `old`, `+` for lines only in `new`, each in file order.
fn changed_lines<'a>(old: &'a str, new: &'a str) -> Vec<(char, &'a str)> {
    let significant = |text: &'a str| {
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with("<!--"))
            .collect::<Vec<&str>>()
    };
    let (old, new) = (significant(old), significant(new));
    let gone = old.iter().filter(|l| !new.contains(l)).map(|l| ('-', *l));
    let came = new.iter().filter(|l| !old.contains(l)).map(|l| ('+', *l));
    gone.chain(came).collect()
}

fn remove_file(path: &Path) -> Result<(), u8> {
    match std::fs::remove_file(path) {
        Ok(()) => {
            println!("Removed: {}", path.display());
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => {
            eprintln!("claude-tokend: cannot remove {}: {e}", path.display());
            Err(exit::FAILURE)
        }
    }
}

/// FNV-1a, 64 bits. Not a security measure (whoever can edit the file can fix the digest); it
/// only tells our own unedited output from a hand edit, and must stay stable across Rust
/// releases, which `DefaultHasher` does not promise.
fn digest(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// `body` with a line naming its digest: first for a unit, after the XML declaration for a plist.
fn with_digest(body: &str, syntax: Syntax) -> String {
    let d = digest(body);
    match syntax {
        Syntax::Hash => format!(
            "# Written by `claude-tokend service install`, which replaces it while it is unedited ({DIGEST_TAG}{d}).\n{body}"
        ),
        Syntax::Xml => {
            let (first, rest) = body.split_once('\n').unwrap_or((body, ""));
            format!(
                "{first}\n<!-- Written by `claude-tokend service install`, which replaces it while it is unedited ({DIGEST_TAG}{d}). -->\n{rest}"
            )
        }
    }
}

/// Whether `text` is unedited output of `with_digest`.
fn digest_state(text: &str) -> Existing {
    let mut body = String::with_capacity(text.len());
    let mut recorded = None;
    for line in text.split_inclusive('\n') {
        if recorded.is_none()
            && let Some(at) = line.find(DIGEST_TAG)
        {
            let hex = &line[at + DIGEST_TAG.len()..];
            recorded = Some(
                hex.chars()
                    .take_while(char::is_ascii_hexdigit)
                    .collect::<String>(),
            );
            continue;
        }
        body.push_str(line);
    }
    match recorded {
        Some(d) if d == digest(&body) => Existing::Ours,
        _ => Existing::Edited,
    }
}

// ---------------------------------------------------------------------------------------------
// the service managers

/// `gui/<uid>`: the per-user launchd domain of a logged-in user.
fn gui_domain() -> String {
    // SAFETY: getuid has no preconditions and cannot fail.
    format!("gui/{}", unsafe { libc::getuid() })
}

fn systemctl(args: &[&str], hint: &str) -> Result<(), u8> {
    let mut full = vec![OsStr::new("--user")];
    full.extend(args.iter().map(OsStr::new));
    run_step("systemctl", &full, hint)
}

fn launchctl(args: &[&OsStr], hint: &str) -> Result<(), u8> {
    run_step("launchctl", args, hint)
}

/// Whether launchd has the agent loaded (`launchctl print` succeeds), asked quietly.
fn launchctl_probe(target: &str) -> Result<bool, u8> {
    match Process::new("launchctl")
        .args(["print", target])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(s) => Ok(s.success()),
        Err(e) => {
            eprintln!("claude-tokend: cannot run launchctl: {e} (is this macOS?)");
            Err(exit::FAILURE)
        }
    }
}

/// Runs one step, printing it first; on failure says which command failed and how to go on.
fn run_step(program: &str, args: &[&OsStr], hint: &str) -> Result<(), u8> {
    let mut shown = program.to_owned();
    for a in args {
        shown.push(' ');
        shown.push_str(&shell_quote(&a.to_string_lossy()));
    }
    println!("Running: {shown}");
    match Process::new(program)
        .args(args)
        .stdin(Stdio::null())
        .status()
    {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => {
            eprintln!(
                "claude-tokend: `{shown}` failed ({s}); {hint}. Run it by hand to see why, then go on from there."
            );
            Err(exit::FAILURE)
        }
        Err(e) => {
            eprintln!(
                "claude-tokend: cannot run `{program}`: {e} (is it installed and on PATH?); {hint}. \
                 The step was: {shown}"
            );
            Err(exit::FAILURE)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn once(haystack: &str, needle: &str) -> bool {
        haystack
            .lines()
            .filter(|l| l.trim() == needle.trim() || l.starts_with(needle))
            .count()
            == 1
    }

    #[test]
    fn templates_have_each_anchor_once() {
        assert!(once(UNIT_TEMPLATE, UNIT_EXEC_LINE));
        assert!(once(UNIT_TEMPLATE, UNIT_ENV_MARK));
        assert!(once(SANDBOX_TEMPLATE, SANDBOX_PATHS_LINE));
        assert!(once(AGENT_TEMPLATE, AGENT_ENV_MARK));
        assert_eq!(AGENT_TEMPLATE.matches(AGENT_PROGRAM).count(), 1);
        assert_eq!(AGENT_TEMPLATE.matches(AGENT_HOME).count(), 3);
        assert!(AGENT_TEMPLATE.contains(&format!("<string>{LABEL}</string>")));
    }

    #[test]
    fn the_unit_has_what_the_issue_asks_for() {
        for line in [
            "Type=notify",
            "ExecReload=/bin/kill -HUP $MAINPID",
            "Restart=on-failure",
            "UMask=0077",
            "NoNewPrivileges=yes",
            "LockPersonality=yes",
            "RestrictRealtime=yes",
            "RestrictSUIDSGID=yes",
            "SystemCallArchitectures=native",
            "SystemCallFilter=@system-service",
            "MemoryDenyWriteExecute=yes",
            "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
            "RestrictNamespaces=yes",
            "WantedBy=default.target",
        ] {
            assert!(
                UNIT_TEMPLATE.lines().any(|l| l == line),
                "unit lacks {line}"
            );
        }
        for prefix in ["RestartSec=", "WatchdogSec="] {
            assert!(
                UNIT_TEMPLATE.lines().any(|l| l.starts_with(prefix)),
                "unit lacks {prefix}"
            );
        }
        // The namespace-needing directives live only in the drop-in.
        for key in ["ProtectSystem=", "ProtectHome=", "PrivateTmp="] {
            assert!(
                !UNIT_TEMPLATE.lines().any(|l| l.starts_with(key)),
                "{key} in the base unit"
            );
            assert!(
                SANDBOX_TEMPLATE.lines().any(|l| l.starts_with(key)),
                "{key} not in the drop-in"
            );
        }
    }

    #[test]
    fn default_refresh_before_matches_the_cli() {
        let cmd = crate::cli::Cli::command();
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_id() == "refresh_before")
            .expect("--refresh-before");
        let default = arg.get_default_values()[0].to_str().unwrap();
        assert_eq!(
            tokend_core::settings::parse_duration(default).unwrap(),
            DEFAULT_REFRESH_BEFORE
        );
    }

    #[test]
    fn renders_the_unit_with_program_and_settings() {
        let env = vec![
            (
                "CLAUDE_TOKEND_CREDENTIALS",
                "/home/a b/50%/c.json".to_owned(),
            ),
            ("CLAUDE_CONFIG_DIR", "/home/u/.claude".to_owned()),
        ];
        let unit = render_unit(Path::new("/opt/my tools/claude-tokend"), &env).unwrap();
        assert!(unit.contains("\nExecStart=\"/opt/my tools/claude-tokend\"\n"));
        assert!(!unit.contains(UNIT_EXEC_LINE));
        assert!(
            unit.contains("\nEnvironment=\"CLAUDE_TOKEND_CREDENTIALS=/home/a b/50%%/c.json\"\n")
        );
        assert!(unit.contains("\nEnvironment=CLAUDE_CONFIG_DIR=/home/u/.claude\n"));
        // The settings sit in [Service], before [Install].
        let env_at = unit.find("Environment=").unwrap();
        assert!(env_at > unit.find("[Service]").unwrap());
        assert!(env_at < unit.find("[Install]").unwrap());
        let plain = render_unit(Path::new("/usr/bin/claude-tokend"), &[]).unwrap();
        assert!(plain.contains("\nExecStart=/usr/bin/claude-tokend\n"));
        assert!(!plain.contains("Environment="));
    }

    #[test]
    fn renders_the_sandbox_paths() {
        let dropin = render_sandbox(&["/home/u".into(), "/data/my creds".into()]).unwrap();
        assert!(dropin.contains("\nReadWritePaths=-/home/u \"-/data/my creds\"\n"));
        assert!(!dropin.contains(SANDBOX_PATHS_LINE));
    }

    #[test]
    fn renders_the_agent_as_escaped_xml() {
        let env = vec![("CLAUDE_CONFIG_DIR", "/Users/a&b/<c>".to_owned())];
        let agent = render_agent(
            Path::new("/Users/a&b/bin/claude-tokend"),
            Path::new("/Users/a&b"),
            &env,
        )
        .unwrap();
        assert!(agent.contains("<string>/Users/a&amp;b/bin/claude-tokend</string>"));
        assert!(agent.contains("<string>/Users/a&amp;b/Library/Logs/claude-tokend.log</string>"));
        assert!(agent.contains("<key>CLAUDE_CONFIG_DIR</key>"));
        assert!(agent.contains("<string>/Users/a&amp;b/&lt;c&gt;</string>"));
        assert!(!agent.contains('@'), "a placeholder was left:\n{agent}");
        let v: plist::Value = plist::from_bytes(agent.as_bytes()).expect("valid plist");
        let env = v.as_dictionary().unwrap()["EnvironmentVariables"]
            .as_dictionary()
            .unwrap();
        assert_eq!(env["HOME"].as_string(), Some("/Users/a&b"));
        assert_eq!(env["CLAUDE_CONFIG_DIR"].as_string(), Some("/Users/a&b/<c>"));
    }

    /// The embedded template itself is a well-formed plist with the right keys and types.
    #[test]
    fn the_agent_template_parses() {
        let v: plist::Value = plist::from_bytes(AGENT_TEMPLATE.as_bytes()).expect("valid plist");
        let d = v.as_dictionary().expect("a dict at the top");
        assert_eq!(d["Label"].as_string(), Some(LABEL));
        let args = d["ProgramArguments"]
            .as_array()
            .expect("ProgramArguments array");
        assert_eq!(args.len(), 1);
        assert_eq!(args[0].as_string(), Some(AGENT_PROGRAM));
        assert_eq!(d["RunAtLoad"].as_boolean(), Some(true));
        let keep = d["KeepAlive"].as_dictionary().expect("KeepAlive dict");
        assert_eq!(keep["SuccessfulExit"].as_boolean(), Some(false));
        assert_eq!(d["ProcessType"].as_string(), Some("Background"));
        assert!(d["ThrottleInterval"].as_unsigned_integer().unwrap() >= 10);
        assert_eq!(d["Umask"].as_unsigned_integer(), Some(0o077));
        for k in ["StandardOutPath", "StandardErrorPath"] {
            assert_eq!(
                d[k].as_string(),
                Some("@HOME@/Library/Logs/claude-tokend.log")
            );
        }
        let env = d["EnvironmentVariables"].as_dictionary().unwrap();
        assert_eq!(env["HOME"].as_string(), Some(AGENT_HOME));
    }

    #[test]
    fn words_are_quoted_only_when_needed() {
        assert_eq!(systemd_word("/usr/bin/x"), "/usr/bin/x");
        assert_eq!(systemd_word("A=b c"), "\"A=b c\"");
        assert_eq!(systemd_word("50%"), "50%%");
        assert_eq!(systemd_word("$HOME"), "\"$HOME\"");
        assert_eq!(shell_quote("/a/b"), "/a/b");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn refuses_values_no_service_file_can_hold() {
        for bad in ["a\nb", "a\"b", "a\\b", "a\tb"] {
            assert_eq!(check_value("x", bad), Err(exit::USAGE), "{bad:?}");
        }
        assert_eq!(check_value("x", "/home/a b/ü/50%$"), Ok(()));
    }

    #[test]
    fn digest_tells_our_output_from_edits() {
        for syntax in [Syntax::Hash, Syntax::Xml] {
            let body = "<?xml version=\"1.0\"?>\nline one\nline two\n";
            let file = with_digest(body, syntax);
            assert_eq!(digest_state(&file), Existing::Ours, "{syntax:?}");
            assert_eq!(
                digest_state(&file.replace("line two", "line 2")),
                Existing::Edited
            );
            assert_eq!(
                digest_state(body),
                Existing::Edited,
                "no digest line: not ours"
            );
        }
        // Stable across releases: a fixed input has a fixed digest.
        assert_eq!(digest(""), "cbf29ce484222325");
        assert_eq!(digest("a"), "af63dc4c8601ec8c");
    }

    #[test]
    fn durations_read_back_exactly() {
        for d in [1, 59, 60, 90, 900, 3600, 5400, 86_400] {
            let d = Duration::from_secs(d);
            let text = duration_setting(d);
            assert_eq!(
                tokend_core::settings::parse_duration(&text),
                Ok(d),
                "{text}"
            );
        }
        assert_eq!(duration_setting(Duration::from_secs(1200)), "20m");
        assert_eq!(duration_setting(Duration::from_millis(1500)), "1500ms");
    }

    #[test]
    fn changed_lines_ignore_comments() {
        let old = "# a\nExecStart=/x\nEnvironment=A=1\nType=notify\n";
        let new = "# b\nExecStart=/y\nType=notify\n";
        assert_eq!(
            changed_lines(old, new),
            vec![
                ('-', "ExecStart=/x"),
                ('-', "Environment=A=1"),
                ('+', "ExecStart=/y")
            ]
        );
    }

    #[test]
    fn normalize_is_lexical() {
        assert_eq!(normalize(Path::new("/a/./b/../c")), PathBuf::from("/a/c"));
    }
}
