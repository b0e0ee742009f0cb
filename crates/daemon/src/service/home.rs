//! Where the service files go: the unit and its drop-ins under `$XDG_CONFIG_HOME/systemd/user`,
//! the agent and its log under `~/Library`, all from `HOME` and `XDG_CONFIG_HOME`, and where a
//! package's unit would be; and the lexical path helpers the other pieces share. It reads the environment, never the disk.

use std::path::{Component, Path, PathBuf};

use crate::exit;

/// The systemd unit's name.
pub(super) const UNIT: &str = "claude-tokend.service";
/// The launchd label, which also names the plist file.
pub(super) const LABEL: &str = "io.github.claude-tokend";
/// The drop-in's file name inside `claude-tokend.service.d/`.
pub(super) const SANDBOX_FILE: &str = "sandbox.conf";
/// The drop-in carrying the settings onto a package's unit. Drop-ins are read in name order,
/// and this one sorts before `override.conf` (what `systemctl --user edit` writes), so the
/// user's own settings still win over it.
pub(super) const INSTALL_FILE: &str = "install.conf";
/// Where a package puts the user unit (CONTRACT.md "Packages").
const PACKAGED_UNIT_DIR: &str = "/usr/lib/systemd/user";

/// Where the service files go, from `HOME` and `XDG_CONFIG_HOME`.
pub(super) struct Home {
    pub(super) home: PathBuf,
    /// `$XDG_CONFIG_HOME`, else `~/.config` (a relative `XDG_CONFIG_HOME` is ignored, as the
    /// XDG spec and systemd do).
    config: PathBuf,
}

impl Home {
    pub(super) fn from_env() -> Result<Home, u8> {
        let home = match std::env::var_os("HOME").map(PathBuf::from) {
            Some(h) if h.is_absolute() => h,
            _ => {
                tell!(
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

    pub(super) fn unit_dir(&self) -> PathBuf {
        self.config.join("systemd").join("user")
    }

    pub(super) fn unit_path(&self) -> PathBuf {
        self.unit_dir().join(UNIT)
    }

    pub(super) fn dropin_dir(&self) -> PathBuf {
        self.unit_dir().join(format!("{UNIT}.d"))
    }

    pub(super) fn sandbox_path(&self) -> PathBuf {
        self.dropin_dir().join(SANDBOX_FILE)
    }

    pub(super) fn install_path(&self) -> PathBuf {
        self.dropin_dir().join(INSTALL_FILE)
    }

    /// The unit a package installed, where it would be (a debug-build test seam moves it:
    /// a test cannot write /usr/lib).
    pub(super) fn packaged_unit(&self) -> PathBuf {
        tokend_core::seams::packaged_unit_dir()
            .unwrap_or_else(|| PathBuf::from(PACKAGED_UNIT_DIR))
            .join(UNIT)
    }

    pub(super) fn agent_path(&self) -> PathBuf {
        self.home
            .join("Library")
            .join("LaunchAgents")
            .join(format!("{LABEL}.plist"))
    }

    pub(super) fn log_path(&self) -> PathBuf {
        self.home
            .join("Library")
            .join("Logs")
            .join("claude-tokend.log")
    }
}

pub(super) fn parent(path: &Path) -> PathBuf {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("/"))
        .to_path_buf()
}

/// Drops `.` and resolves `..` lexically (the path is absolute and not yet followed through
/// links, which is what the daemon sees too).
pub(super) fn normalize(path: &Path) -> PathBuf {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn normalize_is_lexical() {
        assert_eq!(normalize(Path::new("/a/./b/../c")), PathBuf::from("/a/c"));
    }
}
