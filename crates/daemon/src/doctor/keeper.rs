//! The `keeper` check of one login: who keeps it fresh? The live claude-tokend daemons that
//! recorded themselves as its keepers (`Store::keepers`: read from the program's lock file
//! without locking or creating it; a dead pid keeps nothing), and the systemd user unit or
//! launchd agent: installed, enabled, running, with its pid, and whether this login is one of
//! its logins.

use tokend_core::store::Store;

use super::service::{Manager, ServiceFacts};
use super::{Check, Findings, login_flag};

pub struct Facts<'s> {
    /// The live daemons keeping this login.
    pub keepers: Vec<u32>,
    pub service: &'s ServiceFacts,
    /// Whether the service keeps this login (`None`: cannot tell).
    pub service_keeps: Option<bool>,
    /// `--config-dir DIR` (or `--credentials PATH`) naming this login, after those of the
    /// logins the service keeps already, for `service install` to paste.
    pub login_flag: String,
}

impl<'s> Facts<'s> {
    pub fn gather(store: &Store, service: &'s ServiceFacts) -> Facts<'s> {
        let path = store.path();
        // A service that keeps other logins keeps them after a reinstall too.
        let mut flags: Vec<String> = match service.logins.as_ref().filter(|_| service.installed) {
            Some(theirs) => theirs.iter().map(|p| login_flag(p)).collect(),
            None => Vec::new(),
        };
        let mine = login_flag(path);
        if !flags.contains(&mine) {
            flags.push(mine);
        }
        Facts {
            keepers: store.keepers(),
            service_keeps: service.keeps(path),
            service,
            login_flag: flags.join(" "),
        }
    }
}

/// `keeper`: warn when no daemon keeps the login (Claude Code alone refreshes it, from
/// whichever session notices first, and those race), when two do, when the service is
/// installed but not running (or not enabled), and when the service manager could not be asked.
pub fn check(f: &Facts) -> Check {
    let svc = f.service;
    let mut found = Findings::default();
    let state = svc.state.as_ref().ok();
    let svc_pid = state.and_then(|s| s.pid.filter(|_| s.running));
    // Whether the service is meant to keep this login (unknown logins: assume it is).
    let ours = svc.installed && f.service_keeps != Some(false);
    let install = format!(
        "`claude-tokend service install --now {}` (a service that keeps it from every login \
         on)",
        f.login_flag
    );
    match f.keepers.as_slice() {
        [] => {
            let detail = "no claude-tokend daemon keeps this login fresh: Claude Code alone \
                          will refresh it, from whichever session notices first, and those \
                          refreshes race";
            match state {
                Some(s) if ours && s.running => found.warn(
                    format!(
                        "{detail}; {} runs (pid {}) but has not recorded itself as this \
                         login's keeper (an older claude-tokend?)",
                        svc.name,
                        s.pid.map_or("unknown".into(), |p| p.to_string())
                    ),
                    format!("restart it: {}", restart(svc)),
                ),
                // Not asked: the warning below says only that.
                None if ours => found.warn(detail, format!("keep it with {install}")),
                _ if ours => found.warn(
                    format!("{detail}; {} is installed but not running", svc.name),
                    format!(
                        "start it: {} (why it stopped: {})",
                        svc.start_command(),
                        svc.logs_command()
                    ),
                ),
                _ => found.warn(detail, format!("keep it with {install}")),
            }
        }
        [one] => {
            // The service runs a daemon that did not record itself (an older claude-tokend)
            // beside a recorded one: two.
            if let Some(p) = svc_pid.filter(|p| p != one && ours) {
                found.warn(
                    format!(
                        "two claude-tokend daemons keep this login: pid {p}, {}'s (which has \
                         not recorded itself: an older claude-tokend?), and pid {one}: safe, \
                         since the locks take turns, but one is enough",
                        svc.name
                    ),
                    format!(
                        "stop the one started by hand: kill {one} (and restart the service \
                         so it records itself: {})",
                        restart(svc)
                    ),
                );
            }
        }
        many => {
            let pids: Vec<String> = many.iter().map(u32::to_string).collect();
            let others: Vec<String> = many
                .iter()
                .filter(|p| Some(**p) != svc_pid.filter(|s| ours && many.contains(s)))
                .map(u32::to_string)
                .collect();
            found.warn(
                format!(
                    "{} claude-tokend daemons keep this login (pids {}): safe, since the locks \
                     take turns, but one is enough",
                    many.len(),
                    pids.join(", ")
                ),
                // The service's pid counts only when it is one of these keepers (a service
                // keeping another login runs none of them).
                match svc_pid.filter(|p| ours && many.contains(p)) {
                    Some(p) => format!(
                        "stop the ones the service did not start (pid {p} is the service's): \
                         kill {}",
                        others.join(" ")
                    ),
                    // Which one is the service's is unknown: never pick one to kill blindly.
                    None if svc.installed && svc.state.is_err() => format!(
                        "stop the one you started by hand (kill <its pid>); {} may run one \
                         of them and {} could not be asked which",
                        svc.name,
                        manager_name(svc)
                    ),
                    None => format!("stop all but one: kill {}", pids[1..].join(" ")),
                },
            );
        }
    }
    match &svc.state {
        Err(why) => found.warn(
            format!(
                "{} could not be asked about {}: {why}",
                manager_name(svc),
                svc.name
            ),
            match svc.manager {
                // No systemd at all: no user bus to find, no linger to enable.
                Manager::Systemd if why.starts_with("there is no ") => {
                    "this system has no systemd (no systemctl on PATH): keep the login another \
                     way, e.g. a cron job running `claude-tokend --once` every 5 minutes, or \
                     `claude-tokend` started by your init system or login script"
                }
                Manager::Systemd => {
                    "systemctl --user needs your user's service manager: from su, sudo or an ssh \
                     session without one, `export XDG_RUNTIME_DIR=/run/user/$(id -u)`; if none \
                     runs for your user, `loginctl enable-linger $USER` (or log in); then run \
                     doctor again"
                }
                Manager::Launchd => {
                    "run doctor in your own login session on the Mac (launchctl print \
                     gui/$(id -u) needs it)"
                }
            },
        ),
        // Said above when nobody keeps it; said here when a hand-started daemon does.
        Ok(s) if ours && !s.running && !f.keepers.is_empty() => found.warn(
            format!(
                "{} is installed but not running, so nothing keeps this login after this \
                 daemon stops",
                svc.name
            ),
            format!(
                "start it instead: {} (why it stopped: {})",
                svc.start_command(),
                svc.logs_command()
            ),
        ),
        Ok(s) if ours && s.running && s.enabled == Some(false) => found.warn(
            format!(
                "{} runs but is not enabled, so it will not start at your next login",
                svc.name
            ),
            svc.start_command(),
        ),
        Ok(_) => {}
    }
    let named = ok_detail(f, svc_pid);
    let mut check = found.into_check("keeper", named.clone());
    // A warning never hides which process keeps the login (CONTRACT.md: doctor says it).
    if check.fix.is_some() && f.keepers.len() == 1 && !check.detail.contains("two ") {
        check.detail = format!("{named}; {}", check.detail);
    }
    check
}

fn restart(svc: &ServiceFacts) -> String {
    match svc.manager {
        Manager::Systemd => "systemctl --user restart claude-tokend.service".into(),
        Manager::Launchd => "launchctl kickstart -k gui/$(id -u)/io.github.claude-tokend".into(),
    }
}

fn manager_name(svc: &ServiceFacts) -> &'static str {
    match svc.manager {
        Manager::Systemd => "systemd",
        Manager::Launchd => "launchd",
    }
}

/// Who keeps it, when one daemon does.
fn ok_detail(f: &Facts, svc_pid: Option<u32>) -> String {
    let Some(pid) = f.keepers.first() else {
        return String::new();
    };
    let svc = f.service;
    let state = svc.state.as_ref().map(|s| s.text.as_str()).unwrap_or("");
    if svc_pid == Some(*pid) {
        return format!(
            "kept fresh by claude-tokend pid {pid}, {} ({state})",
            svc.name
        );
    }
    let service = if svc.installed && svc.state.is_err() {
        format!("{} is installed", svc.name)
    } else if svc.installed && f.service_keeps == Some(true) {
        format!("{} ({state}) keeps it too", svc.name)
    } else {
        format!(
            "not a service: it stops when you log out or reboot (claude-tokend service \
             install --now {} makes one)",
            f.login_flag
        )
    };
    format!("kept fresh by claude-tokend pid {pid}; {service}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Verdict;
    use crate::doctor::service::State;
    use std::path::PathBuf;

    fn service(installed: bool, state: Result<State, String>) -> ServiceFacts {
        ServiceFacts {
            manager: Manager::Systemd,
            name: "the systemd user service claude-tokend.service".into(),
            file: PathBuf::from("/h/.config/systemd/user/claude-tokend.service"),
            installed,
            state,
            logins: installed.then(|| vec![PathBuf::from("/h/.claude/.credentials.json")]),
            items: None,
        }
    }

    fn running(pid: u32) -> Result<State, String> {
        Ok(State {
            loaded: true,
            enabled: Some(true),
            running: true,
            pid: Some(pid),
            text: "enabled, active (running)".into(),
        })
    }

    fn judge(keepers: &[u32], svc: &ServiceFacts) -> Check {
        check(&Facts {
            keepers: keepers.to_vec(),
            service: svc,
            service_keeps: svc.logins.as_ref().map(|_| true),
            login_flag: "--config-dir /h/.claude".into(),
        })
    }

    #[test]
    fn who_keeps_it_by_table() {
        let none = service(false, Ok(State::default()));
        let c = judge(&[], &none);
        assert_eq!(c.verdict, Verdict::Warn);
        assert!(
            c.fix
                .unwrap()
                .contains("service install --now --config-dir /h/.claude")
        );
        let c = judge(&[7], &none);
        assert_eq!(c.verdict, Verdict::Ok);
        assert!(c.detail.contains("pid 7; not a service"), "{}", c.detail);
        let svc = service(true, running(7));
        let c = judge(&[7], &svc);
        assert_eq!(c.verdict, Verdict::Ok);
        assert!(
            c.detail.contains("pid 7, the systemd user service"),
            "{}",
            c.detail
        );
        let c = judge(&[7, 9], &svc);
        assert_eq!(c.verdict, Verdict::Warn);
        assert!(c.fix.unwrap().ends_with("kill 9"));
        let stopped = service(
            true,
            Ok(State {
                loaded: true,
                ..State::default()
            }),
        );
        let c = judge(&[], &stopped);
        assert!(
            c.detail.contains("installed but not running"),
            "{}",
            c.detail
        );
        let c = judge(&[7], &stopped);
        assert_eq!(c.verdict, Verdict::Warn);
        let unasked = service(false, Err("Failed to connect to bus".into()));
        let c = judge(&[7], &unasked);
        assert_eq!(c.verdict, Verdict::Warn);
        assert!(
            c.detail.contains("Failed to connect to bus"),
            "{}",
            c.detail
        );
    }

    #[test]
    fn the_daemon_keeping_it_is_named_even_with_a_warning() {
        // (a) a warning about the service must not hide who keeps the login.
        let unasked = service(true, Err("Failed to connect to bus".into()));
        let c = judge(&[7], &unasked);
        assert_eq!(c.verdict, Verdict::Warn);
        assert!(c.detail.contains("claude-tokend pid 7"), "{}", c.detail);
        let stopped = service(
            true,
            Ok(State {
                loaded: true,
                ..State::default()
            }),
        );
        let c = judge(&[7], &stopped);
        assert!(c.detail.contains("claude-tokend pid 7"), "{}", c.detail);
    }

    #[test]
    fn the_services_unrecorded_daemon_and_a_recorded_one_are_two() {
        // (b) the service runs pid 7 (an older build that records nothing), 9 was started by
        // hand: two daemons.
        let svc = service(true, running(7));
        let c = judge(&[9], &svc);
        assert_eq!(c.verdict, Verdict::Warn);
        assert!(c.detail.contains("two"), "{}", c.detail);
        assert!(c.fix.unwrap().contains("kill 9"));
    }

    #[test]
    fn a_service_keeping_another_login_is_not_taken_for_one_of_its_keepers() {
        // The service runs pid 5 for another login; 7 and 9 were started by hand for this
        // one: "pid 5 is the service's: kill 7 9" would leave this login with no keeper.
        let svc = service(true, running(5));
        let c = check(&Facts {
            keepers: vec![7, 9],
            service: &svc,
            service_keeps: Some(false),
            login_flag: "--config-dir /m1".into(),
        });
        let fix = c.fix.unwrap();
        assert!(!fix.contains("kill 7 9"), "{fix}");
        assert!(fix.contains("kill 9"), "{fix}");
    }

    #[test]
    fn a_service_that_could_not_be_asked_is_never_killed_blindly() {
        // (c) which of 7 and 9 is the service's is unknown: no "kill 9" picked at random.
        let unasked = service(true, Err("Failed to connect to bus".into()));
        let c = judge(&[7, 9], &unasked);
        let fix = c.fix.unwrap();
        assert!(!fix.contains("kill 9") || fix.contains("by hand"), "{fix}");
        assert!(fix.contains("by hand"), "{fix}");
        // (d) not asked, nothing running: no "installed but not running" beside "could not be
        // asked".
        let c = judge(&[], &unasked);
        assert!(!c.detail.contains("not running"), "{}", c.detail);
        assert!(c.detail.contains("could not be asked"), "{}", c.detail);
    }

    #[test]
    fn no_systemctl_at_all_is_not_told_about_user_buses() {
        // (e) Linux without systemd.
        let none = service(false, Err("there is no systemctl on PATH".into()));
        let c = judge(&[], &none);
        let fix = c.fix.unwrap();
        assert!(!fix.contains("XDG_RUNTIME_DIR"), "{fix}");
        assert!(!fix.contains("linger"), "{fix}");
        assert!(fix.contains("--once"), "{fix}");
    }
}
