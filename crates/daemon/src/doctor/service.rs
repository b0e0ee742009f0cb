//! What the service manager says about claude-tokend's service, for `doctor`: whether the
//! systemd user unit or the launchd agent is installed, enabled, running (with its pid), and
//! which logins it keeps. It asks the real manager (`systemctl --user show`, `launchctl print
//! gui/<uid>/…`), once, bounded in time; when the manager cannot be asked (no user bus, no
//! `systemctl` on PATH) it says why and still reads the installed files for the logins. It
//! changes nothing: no `daemon-reload`, no start, no write.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::service_text::{
    env_pairs, kept_of, properties, read_plist, read_print, read_unit, same_login, show_argv, words,
};

/// The systemd unit's name and the launchd label (as `service install` writes them).
const UNIT: &str = "claude-tokend.service";
const LABEL: &str = "io.github.claude-tokend";
/// The unit a package installs (see CONTRACT.md "Packages"); a user's own unit wins over it.
const PACKAGED_UNIT: &str = "/usr/lib/systemd/user/claude-tokend.service";
/// How long the manager may take to answer: doctor is run by a person waiting for it.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Manager {
    Systemd,
    Launchd,
}

/// What the manager said about the service when it could be asked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct State {
    /// Known to the manager (systemd: the unit is loaded; launchd: the agent is loaded).
    pub loaded: bool,
    /// Started at every login (systemd's `UnitFileState`); `None` where the manager does not
    /// say (launchd loads every installed agent at login).
    pub enabled: Option<bool>,
    pub running: bool,
    /// The running daemon's pid.
    pub pid: Option<u32>,
    /// How the manager put it (`active (running)`, `state = running`), for the detail.
    pub text: String,
}

/// The service as far as doctor could learn.
#[derive(Clone, Debug)]
pub struct ServiceFacts {
    pub manager: Manager,
    /// "the systemd user service claude-tokend.service", for messages.
    pub name: String,
    /// The file `service install` writes.
    pub file: PathBuf,
    /// A unit or agent is installed (the manager knows it, or its file is there).
    pub installed: bool,
    /// The manager's answer, or why it could not be asked.
    pub state: Result<State, String>,
    /// The credentials paths of the logins the service keeps (`None`: not installed, or its
    /// files could not be read).
    pub logins: Option<Vec<PathBuf>>,
    /// For each of `logins`, the Keychain item Claude Code would keep it in (its service name,
    /// from the config directory as written: a trailing slash or a link names another item);
    /// `None` for a login named by its file.
    pub items: Option<Vec<Option<String>>>,
}

/// Logins and their Keychain items, as `kept_of` gives them, split for [`ServiceFacts`].
type Kept = (Vec<PathBuf>, Vec<Option<String>>);

fn split(kept: Option<Kept>) -> (Option<Vec<PathBuf>>, Option<Vec<Option<String>>>) {
    match kept {
        Some((logins, items)) => (Some(logins), Some(items)),
        None => (None, None),
    }
}

impl ServiceFacts {
    /// Whether the service keeps the login at `path` (`None`: cannot tell).
    pub fn keeps(&self, path: &Path) -> Option<bool> {
        self.logins
            .as_ref()
            .map(|l| l.iter().any(|k| same_login(k, path)))
    }

    /// The command that starts it now and at every login.
    pub fn start_command(&self) -> String {
        match self.manager {
            Manager::Systemd => format!("systemctl --user enable --now {UNIT}"),
            Manager::Launchd => {
                format!("launchctl bootstrap gui/$(id -u) {}", super::sh(&self.file))
            }
        }
    }

    /// Where its logs are.
    pub fn logs_command(&self) -> &'static str {
        match self.manager {
            Manager::Systemd => "journalctl --user -u claude-tokend",
            Manager::Launchd => "tail ~/Library/Logs/claude-tokend.log",
        }
    }
}

/// The manager `service` would use: `CLAUDE_TOKEND_SERVICE_MANAGER`, else the OS's.
fn manager() -> Manager {
    match std::env::var("CLAUDE_TOKEND_SERVICE_MANAGER").as_deref() {
        Ok("systemd") => Manager::Systemd,
        Ok("launchd") => Manager::Launchd,
        _ if cfg!(target_os = "macos") => Manager::Launchd,
        _ => Manager::Systemd,
    }
}

/// Asks the service manager about the service (once).
pub fn ask() -> ServiceFacts {
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from);
    match manager() {
        Manager::Systemd => systemd(home.as_deref()),
        Manager::Launchd => launchd(home.as_deref()),
    }
}

// ---------------------------------------------------------------------------------------------
// systemd

fn systemd(home: Option<&Path>) -> ServiceFacts {
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| home.map(|h| h.join(".config")))
        .unwrap_or_default();
    let unit_dir = config.join("systemd").join("user");
    let file = unit_dir.join(UNIT);
    let name = format!("the systemd user service {UNIT}");
    let asked = run_bounded(
        "systemctl",
        &[
            "--user",
            "show",
            UNIT,
            "--property=LoadState,UnitFileState,ActiveState,SubState,MainPID,ExecStart,\
             Environment",
        ],
    );
    let shown = match asked {
        Ok((true, out, _)) => Ok(out),
        Ok((false, out, err)) => Err(first_line(&err)
            .or_else(|| first_line(&out))
            .unwrap_or("systemctl --user show failed")
            .to_owned()),
        Err(e) => Err(e),
    };
    let from_files = || unit_from_files(&unit_dir, home);
    match shown {
        Ok(out) => {
            let props = properties(&out);
            let prop = |k: &str| {
                props
                    .iter()
                    .find(|(key, _)| key == k)
                    .map(|(_, v)| v.as_str())
            };
            let loaded = prop("LoadState") == Some("loaded");
            let active = prop("ActiveState").unwrap_or("");
            let sub = prop("SubState").unwrap_or("");
            let enabled = prop("UnitFileState").map(|s| s.starts_with("enabled") || s == "linked");
            let pid = prop("MainPID")
                .and_then(|p| p.parse().ok())
                .filter(|p| *p != 0);
            // The unit's files first: `systemctl show` joins ExecStart's arguments with plain
            // spaces and prints an Environment entry holding a space as `[unprintable]`, so a
            // login path with a space cannot be read back from it.
            let (logins, items) = split(from_files().or_else(|| {
                loaded.then(|| {
                    let argv = prop("ExecStart").map(show_argv).unwrap_or_default();
                    let env = prop("Environment").map(words).unwrap_or_default();
                    kept_of(&argv, &env_pairs(&env), home)
                })
            }));
            let installed = loaded || logins.is_some();
            let mut text = match (loaded, active) {
                (false, _) if installed => {
                    "installed, but systemd has not loaded it (systemctl --user daemon-reload)"
                        .to_owned()
                }
                (false, _) => "not installed".to_owned(),
                (true, a) => format!("{a} ({sub})"),
            };
            if loaded && let Some(state) = prop("UnitFileState").filter(|s| !s.is_empty()) {
                text = format!("{state}, {text}");
            }
            ServiceFacts {
                manager: Manager::Systemd,
                name,
                file,
                installed,
                state: Ok(State {
                    loaded,
                    enabled: enabled.filter(|_| loaded),
                    running: loaded && active == "active" && sub == "running",
                    pid,
                    text,
                }),
                logins,
                items,
            }
        }
        Err(why) => {
            let (logins, items) = split(from_files());
            ServiceFacts {
                manager: Manager::Systemd,
                name,
                file,
                installed: logins.is_some(),
                state: Err(why),
                logins,
                items,
            }
        }
    }
}

/// The unit as its files say, when systemd cannot be asked (or has not loaded it): the user's
/// unit (else the packaged one) and the drop-ins beside the user's, in name order, read for
/// `ExecStart=` and `Environment=`. `None` when no unit file is there.
fn unit_from_files(unit_dir: &Path, home: Option<&Path>) -> Option<Kept> {
    let own = unit_dir.join(UNIT);
    let main = [own.as_path(), Path::new(PACKAGED_UNIT)]
        .into_iter()
        .find_map(read_small)?;
    let mut texts = vec![main];
    let dropins = unit_dir.join(format!("{UNIT}.d"));
    if let Ok(entries) = std::fs::read_dir(&dropins) {
        let mut names: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "conf"))
            .collect();
        names.sort();
        texts.extend(names.iter().filter_map(|p| read_small(p)));
    }
    let mut argv = Vec::new();
    let mut env = Vec::new();
    for text in &texts {
        read_unit(text, home, &mut argv, &mut env);
    }
    Some(kept_of(&argv, &env_pairs(&env), home))
}

// ---------------------------------------------------------------------------------------------
// launchd

fn launchd(home: Option<&Path>) -> ServiceFacts {
    let file = home
        .unwrap_or(Path::new("~"))
        .join("Library/LaunchAgents")
        .join(format!("{LABEL}.plist"));
    let name = format!("the launchd agent {LABEL}");
    // SAFETY: getuid has no preconditions and cannot fail.
    let target = format!("gui/{}/{LABEL}", unsafe { libc::getuid() });
    let from_file = || {
        let text = read_small(&file)?;
        let (argv, env) = read_plist(&text);
        Some(kept_of(&argv, &env, home))
    };
    let state = match run_bounded("launchctl", &["print", &target]) {
        Ok((true, out, _)) => {
            let (argv, env) = read_print(&out);
            let logins = kept_of(&argv, &env, home);
            let field = |name: &str| {
                out.lines()
                    .map(str::trim)
                    .find_map(|l| l.strip_prefix(name)?.strip_prefix(" = ").map(str::to_owned))
            };
            let state = field("state").unwrap_or_else(|| "unknown".into());
            Ok((
                State {
                    loaded: true,
                    enabled: None,
                    running: state == "running",
                    pid: field("pid").and_then(|p| p.parse().ok()),
                    text: format!("loaded, state = {state}"),
                },
                Some(logins),
            ))
        }
        Ok((false, out, err)) if format!("{out}{err}").contains("Could not find service") => Ok((
            State {
                text: "not loaded".into(),
                ..State::default()
            },
            from_file(),
        )),
        Ok((false, out, err)) => Err(first_line(&err)
            .or_else(|| first_line(&out))
            .unwrap_or("launchctl print failed")
            .to_owned()),
        Err(e) => Err(e),
    };
    match state {
        Ok((state, kept)) => {
            let (logins, items) = split(kept);
            ServiceFacts {
                manager: Manager::Launchd,
                name,
                installed: state.loaded || file.exists(),
                file,
                state: Ok(state),
                logins,
                items,
            }
        }
        Err(why) => {
            let (logins, items) = split(from_file());
            ServiceFacts {
                manager: Manager::Launchd,
                name,
                installed: file.exists(),
                file,
                items,
                state: Err(why),
                logins,
            }
        }
    }
}

/// The most of a unit, drop-in or agent file doctor reads: real ones are a few hundred bytes.
const FILE_CAP: u64 = 256 * 1024;

/// A service file's text, when it is a regular file (links followed, as the manager does): a
/// FIFO or a device in its place is not read (opening one non-blocking does not wait for a
/// writer, and reading it could), and at most [`FILE_CAP`] bytes are.
fn read_small(path: &Path) -> Option<String> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .ok()?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut bytes = Vec::new();
    file.take(FILE_CAP).read_to_end(&mut bytes).ok()?;
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

// ---------------------------------------------------------------------------------------------
// Running the manager's command

/// Runs `program args`, waiting at most [`ASK_TIMEOUT`]: `(success, stdout, stderr)`, or why it
/// could not be run or did not finish. It runs in a process group of its own, and whatever is
/// left of that group when doctor stops waiting is killed: a child it left behind holding a
/// pipe is neither waited for past the limit nor left running.
fn run_bounded(program: &str, args: &[&str]) -> Result<(bool, String, String), String> {
    use std::os::unix::process::CommandExt;
    use std::sync::mpsc::{RecvTimeoutError, channel};
    use std::time::Instant;
    let deadline = Instant::now() + ASK_TIMEOUT;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => format!("there is no {program} on PATH"),
            _ => format!("cannot run {program}: {e}"),
        })?;
    let group = child.id() as libc::pid_t;
    let read = |pipe: Option<Box<dyn Read + Send>>| {
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut p) = pipe {
                // A manager's answer is a few KiB; more is not an answer worth waiting for.
                let _ = p.by_ref().take(1 << 20).read_to_end(&mut bytes);
            }
            let _ = tx.send(String::from_utf8_lossy(&bytes).into_owned());
        });
        rx
    };
    let stdout = read(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = read(child.stderr.take().map(|p| Box::new(p) as _));
    let (tx, exited) = channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    let kill_group = || {
        // SAFETY: kill(2) on the process group made for this run; the group's id stays
        // reserved while any member lives, so it names no one else's processes.
        unsafe { libc::kill(-group, libc::SIGKILL) };
    };
    let too_slow = || format!("{program} did not answer within {}s", ASK_TIMEOUT.as_secs());
    let status = match exited.recv_timeout(ASK_TIMEOUT) {
        Ok(Ok(status)) => status,
        Ok(Err(e)) => {
            kill_group();
            return Err(format!("cannot wait for {program}: {e}"));
        }
        Err(_) => {
            kill_group();
            return Err(too_slow());
        }
    };
    // It has exited: its pipes close at once unless something it left behind holds them.
    let pipes_by = deadline.min(Instant::now() + PIPE_GRACE);
    let left = || pipes_by.saturating_duration_since(Instant::now());
    let out = stdout.recv_timeout(left());
    let err = stderr.recv_timeout(left());
    if matches!(out, Err(RecvTimeoutError::Timeout))
        || matches!(err, Err(RecvTimeoutError::Timeout))
    {
        kill_group();
    }
    let out = out.map_err(|_| too_slow())?;
    Ok((status.success(), out, err.unwrap_or_default()))
}

/// How long a pipe may stay open after the manager's command exited (a child it left holds
/// it): its answer is complete by then.
const PIPE_GRACE: Duration = Duration::from_millis(500);

fn first_line(text: &str) -> Option<&str> {
    text.lines().map(str::trim).find(|l| !l.is_empty())
}
