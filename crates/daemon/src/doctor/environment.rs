//! The checks of this shell's environment, about the machine rather than one login: what makes
//! Claude Code ignore the stored login (`shadowing`), and which store Claude Code started from
//! here reads, compared with the logins the service keeps (`claude-code-store`; on macOS also
//! whether that login is both in the Keychain and in a file).

use std::path::{Path, PathBuf};

use tokend_core::store::{self, Keychain, LocateEnv, Origin, Store};

use super::service::ServiceFacts;
use super::{Check, Findings, login_flag, sh};

/// Which of the variables that take Claude Code's login over are set (never their values).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Shadowing {
    pub oauth_token: bool,
    pub api_key: bool,
    pub auth_token: bool,
}

impl Shadowing {
    pub fn from_process() -> Shadowing {
        // An empty variable is falsy in Node, so Claude Code treats it as unset too.
        let set = |v: Option<std::ffi::OsString>| v.is_some_and(|v| !v.is_empty());
        Shadowing {
            oauth_token: set(std::env::var_os("CLAUDE_CODE_OAUTH_TOKEN")),
            api_key: set(std::env::var_os("ANTHROPIC_API_KEY")),
            auth_token: set(std::env::var_os("ANTHROPIC_AUTH_TOKEN")),
        }
    }
}

/// `shadowing`: fail when `CLAUDE_CODE_OAUTH_TOKEN` is set (Claude Code uses it and ignores
/// the stored login), warn for `ANTHROPIC_API_KEY` or `ANTHROPIC_AUTH_TOKEN`.
pub fn shadowing(s: &Shadowing) -> Check {
    let mut f = Findings::default();
    if s.oauth_token {
        f.fail(
            "CLAUDE_CODE_OAUTH_TOKEN is set in this environment, so Claude Code uses that token \
             and ignores the stored login: nothing kept fresh here reaches it",
            "remove CLAUDE_CODE_OAUTH_TOKEN from your shell profile (~/.bashrc, ~/.zshrc, \
             ~/.profile, or wherever it is exported) and run `unset CLAUDE_CODE_OAUTH_TOKEN` in \
             open shells",
        );
    }
    for (set, name, what) in [
        (
            s.api_key,
            "ANTHROPIC_API_KEY",
            "an API key: its use is billed to that key, not your plan",
        ),
        (
            s.auth_token,
            "ANTHROPIC_AUTH_TOKEN",
            "a bearer token sent in place of the login's",
        ),
    ] {
        if set {
            f.warn(
                format!(
                    "{name} is set in this environment, so Claude Code may use it instead of \
                     the stored login ({what})"
                ),
                format!(
                    "unless you mean Claude Code to use it, remove {name} from your shell \
                     profile and run `unset {name}`"
                ),
            );
        }
    }
    f.into_check(
        "shadowing",
        "none of CLAUDE_CODE_OAUTH_TOKEN, ANTHROPIC_API_KEY or ANTHROPIC_AUTH_TOKEN is set: \
         Claude Code uses its stored login",
    )
}

/// The login Claude Code started from this shell reads.
pub struct ShellStore {
    /// Its credentials path (what locates the file, and names the Keychain item's directory),
    /// and which variable chose it; `None` when nothing can (no HOME).
    pub located: Option<(PathBuf, Origin)>,
    /// On macOS: whether the Keychain item and the file each hold a login (`None` elsewhere,
    /// or when either cannot be read).
    pub both_stores: Option<(Keychain, bool, bool)>,
    /// The live claude-tokend daemons keeping that login, and, when it is not the home's
    /// default login (`~/.claude`), the ones keeping that one: a daemon started by hand
    /// without the shell's `CLAUDE_CONFIG_DIR` keeps the default instead.
    pub keepers: Vec<u32>,
    pub default_keepers: Option<(PathBuf, Vec<u32>)>,
}

impl ShellStore {
    pub fn from_process() -> ShellStore {
        let env = LocateEnv::from_process();
        let located = store::locate(None, &env).ok();
        let macos = cfg!(target_os = "macos") || tokend_core::seams::auto_as_macos();
        let both_stores = match (&located, macos) {
            (Some((path, _)), true) => {
                let item = Keychain {
                    service: store::keychain_service(&env),
                    account: store::keychain_account(&env),
                };
                let in_keychain = holds_login(&Store::keychain(path.clone(), item.clone()));
                let in_file = holds_login(&Store::new(path.clone()));
                Some((item, in_keychain, in_file))
            }
            _ => None,
        };
        let keepers = located
            .as_ref()
            .map(|(path, _)| Store::new(path.clone()).keepers())
            .unwrap_or_default();
        let default = std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .map(|h| store::absolute_lexically(&Path::new(&h).join(".claude/.credentials.json")));
        let default_keepers = default
            .filter(|d| {
                located
                    .as_ref()
                    .is_none_or(|(p, _)| !super::service_text::same_login(p, d))
            })
            .map(|d| {
                let k = Store::new(d.clone()).keepers();
                (d, k)
            });
        ShellStore {
            located,
            both_stores,
            keepers,
            default_keepers,
        }
    }
}

/// Whether a store holds a login (tokens that are not blank).
fn holds_login(store: &Store) -> bool {
    store
        .read()
        .ok()
        .and_then(|s| s.doc.oauth().ok().flatten())
        .is_some_and(|v| !v.is_logged_out())
}

/// Where a located path came from, for the detail.
fn origin_text(origin: Origin) -> &'static str {
    match origin {
        Origin::Explicit => "named explicitly",
        Origin::SecureStorageDir => "from CLAUDE_SECURESTORAGE_CONFIG_DIR",
        Origin::ConfigDir => "from CLAUDE_CONFIG_DIR",
        Origin::Home => "the default, ~/.claude: CLAUDE_CONFIG_DIR is not set",
    }
}

/// `claude-code-store`: fail when the service keeps other logins than the one Claude Code in
/// this shell reads; on macOS, warn when that login is both in the Keychain and in a file (two
/// copies of one refresh-token family: one of them goes stale and logs the other out).
pub fn claude_code_store(shell: &ShellStore, service: &ServiceFacts) -> Check {
    let Some((path, origin)) = &shell.located else {
        return Check::warn(
            "claude-code-store",
            "cannot tell which login Claude Code reads: HOME is not set (nor CLAUDE_CONFIG_DIR)",
            "run doctor from the shell you run Claude Code in",
        );
    };
    let dir = path.parent().unwrap_or(Path::new("/"));
    let mut f = Findings::default();
    let mut ok = format!(
        "Claude Code in this shell reads the login of {} ({})",
        dir.display(),
        origin_text(*origin)
    );
    if let Some(kept) = service.logins.as_ref().filter(|_| service.installed) {
        let at = kept
            .iter()
            .position(|k| super::service_text::same_login(k, path));
        // On macOS the login is a Keychain item, named from the config directory's text as
        // written: the same directory spelled otherwise (a trailing slash, a link) is another
        // item, which the service does not keep.
        let other_item = match (at, &shell.both_stores, &service.items) {
            (Some(i), Some((item, _, _)), Some(items)) => items
                .get(i)
                .cloned()
                .flatten()
                .filter(|theirs| *theirs != item.service)
                .map(|theirs| (item.service.clone(), theirs)),
            _ => None,
        };
        if let Some((ours, theirs)) = other_item {
            f.fail(
                format!(
                    "Claude Code in this shell reads the Keychain item \"{ours}\" (from the \
                     config directory {} as written here), but {} keeps the item \"{theirs}\": \
                     the same directory written otherwise (a trailing slash, a link) names \
                     another item, so the login Claude Code uses is not the one kept fresh",
                    dir.display(),
                    service.name
                ),
                "write CLAUDE_CONFIG_DIR exactly as the service has it (doctor's keeper line \
                 and `claude-tokend service status` show it), or reinstall the service from \
                 this shell: `claude-tokend service install --now`",
            );
        } else if at.is_some() {
            ok.push_str(&format!(", which {} keeps", service.name));
        } else {
            let dirs: Vec<String> = kept
                .iter()
                .map(|k| k.parent().unwrap_or(Path::new("/")).display().to_string())
                .collect();
            f.fail(
                format!(
                    "Claude Code in this shell reads the login of {} ({}), but {} keeps {}: \
                     the login Claude Code uses is not the one kept fresh",
                    dir.display(),
                    origin_text(*origin),
                    service.name,
                    if dirs.is_empty() {
                        "no login".to_owned()
                    } else {
                        dirs.join(", ")
                    }
                ),
                format!(
                    "have the service keep it too: `claude-tokend service install --now {}` \
                     (with the other flags it was installed with, such as --mirror), or run \
                     Claude Code with the config directory the service keeps",
                    kept.iter()
                        .chain(std::iter::once(path))
                        .map(|p| login_flag(p))
                        .collect::<Vec<_>>()
                        .join(" ")
                ),
            );
        }
    }
    // A daemon started by hand (no service, or one that could not be asked) that keeps the
    // home's default login while this shell's Claude Code reads another.
    let service_keeps_it = service.installed
        && service.logins.as_ref().is_some_and(|kept| {
            kept.iter()
                .any(|k| super::service_text::same_login(k, path))
        });
    if !service_keeps_it
        && shell.keepers.is_empty()
        && let Some((default, pids)) = &shell.default_keepers
        && !pids.is_empty()
    {
        let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
        f.fail(
            format!(
                "Claude Code in this shell reads the login of {} ({}), but the running \
                 claude-tokend (pid {}) keeps {}: the login Claude Code uses is not the one \
                 kept fresh",
                dir.display(),
                origin_text(*origin),
                pids.join(", "),
                default.parent().unwrap_or(Path::new("/")).display()
            ),
            format!(
                "run the daemon for this login too (`claude-tokend {}`, or `claude-tokend \
                 service install --now` from this shell), or run Claude Code without \
                 CLAUDE_CONFIG_DIR",
                login_flag(path)
            ),
        );
    }
    if let Some((item, true, true)) = &shell.both_stores {
        f.warn(
            format!(
                "the login is both in the Keychain ({}) and in the file {}: two copies of one \
                 login, and whichever is not refreshed goes stale and its refresh token is \
                 refused",
                item.place(),
                path.display()
            ),
            format!(
                "keep one: Claude Code on macOS uses the Keychain, so move the file away (mv {0} \
                 {0}.old) unless you run Claude Code with the file on purpose",
                sh(path)
            ),
        );
    }
    f.into_check("claude-code-store", ok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Verdict;

    #[test]
    fn shadowing_by_table() {
        let none = Shadowing::default();
        assert_eq!(shadowing(&none).verdict, Verdict::Ok);
        let key = Shadowing {
            api_key: true,
            ..none.clone()
        };
        let c = shadowing(&key);
        assert_eq!(c.verdict, Verdict::Warn);
        assert!(c.detail.contains("ANTHROPIC_API_KEY"), "{}", c.detail);
        let all = Shadowing {
            oauth_token: true,
            api_key: true,
            auth_token: true,
        };
        let c = shadowing(&all);
        assert_eq!(c.verdict, Verdict::Fail);
        for name in [
            "CLAUDE_CODE_OAUTH_TOKEN",
            "ANTHROPIC_API_KEY",
            "ANTHROPIC_AUTH_TOKEN",
        ] {
            assert!(c.detail.contains(name), "{}", c.detail);
        }
    }
}
