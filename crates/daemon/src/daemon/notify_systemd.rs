//! systemd's notification protocol: `READY=1` once the watch is armed, `STATUS=` whenever the
//! state changes, `WATCHDOG=1` at half the `WATCHDOG_USEC` interval, `STOPPING=1` at the end.
//! Without `NOTIFY_SOCKET` every call is a no-op that costs one branch.

use std::time::{Duration, Instant};

use sd_notify::NotifyState;

pub struct Notifier {
    enabled: bool,
    /// Half of `WATCHDOG_USEC`, when systemd asked for pings.
    watchdog_every: Option<Duration>,
    next_ping: Option<Instant>,
    /// The last `STATUS=` sent, so an unchanged state is not re-sent every minute.
    last_status: String,
}

impl Notifier {
    pub fn from_env() -> Self {
        let enabled = std::env::var_os("NOTIFY_SOCKET").is_some();
        let watchdog_every = sd_notify::watchdog_enabled()
            .filter(|_| enabled)
            .map(|d| d / 2)
            .filter(|d| !d.is_zero());
        Notifier {
            enabled,
            watchdog_every,
            next_ping: watchdog_every.map(|d| Instant::now() + d),
            last_status: String::new(),
        }
    }

    fn send(&self, states: &[NotifyState<'_>]) {
        if self.enabled
            && let Err(e) = sd_notify::notify(states)
        {
            tracing::debug!("cannot notify systemd: {e}");
        }
    }

    pub fn ready(&self) {
        self.send(&[NotifyState::Ready]);
    }

    pub fn status(&mut self, text: &str) {
        if self.enabled && text != self.last_status {
            self.send(&[NotifyState::Status(text)]);
            self.last_status = text.to_owned();
        }
    }

    /// When the loop must wake next to keep the watchdog fed.
    pub fn next_ping(&self) -> Option<Instant> {
        self.next_ping
    }

    /// Pings the watchdog if it is time. Called from the event loop, so a ping proves the loop
    /// itself is alive, not just some thread.
    pub fn ping_if_due(&mut self, now: Instant) {
        if let (Some(every), Some(at)) = (self.watchdog_every, self.next_ping)
            && now >= at
        {
            self.send(&[NotifyState::Watchdog]);
            self.next_ping = Some(now + every);
        }
    }

    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping]);
    }
}
