//! The callback of `login --loopback`: the browser comes back to
//! `http://localhost:PORT/callback` with the code. `localhost` may resolve to 127.0.0.1 or to
//! [::1], whichever the browser tries first, so both are listened on, on the same port (RFC 8252
//! §8.3): a port where another local user holds [::1] could hand them the callback, and is never
//! the one the browser is sent to. The connections are served side by side (`callback`), as many
//! as the descriptors allow, so idle connections cannot hold the callback back or push it out.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use tokend_core::login::{Pkce, authorize_url};
use tokend_core::secret::Secret;
use tokend_core::settings::format_duration;
use tokio::net::TcpListener;

use super::callback::{self, MAX_CONNECTIONS, Tally};
use super::show_url;
use crate::cli::{LoginArgs, Settings};
use crate::exit;

/// How long the loopback flow waits for the browser to come back.
const LOOPBACK_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// Port pairs tried when the port 127.0.0.1 gave is taken on [::1]: a chance collision passes
/// on the next pair; a program that takes each port as it appears is not worth more tries.
const BIND_TRIES: u32 = 8;
/// Descriptors kept for everything but the callback's connections: stdio, the listeners, the
/// runtime, the store and its locks, the exchange that follows.
const FD_RESERVE: u64 = 64;

/// The callback's listeners: 127.0.0.1 and [::1] on one port, or 127.0.0.1 alone on a machine
/// without IPv6 (where no one can listen on [::1] either).
struct Listeners {
    v4: TcpListener,
    v6: Option<TcpListener>,
    port: u16,
}

/// Listens on 127.0.0.1 on a port the system picks (`port_for(try)`: 0, except in tests), then on
/// [::1] on that same port. When [::1] is taken there, the pair is given up and another tried.
async fn listen(mut port_for: impl FnMut(u32) -> u16) -> Result<Listeners, String> {
    let mut taken = None;
    for attempt in 0..BIND_TRIES {
        let v4 = TcpListener::bind((Ipv4Addr::LOCALHOST, port_for(attempt)))
            .await
            .map_err(|e| format!("cannot listen on 127.0.0.1 for the callback: {e}"))?;
        let port = v4.local_addr().map_err(|e| e.to_string())?.port();
        match TcpListener::bind((Ipv6Addr::LOCALHOST, port)).await {
            Ok(v6) => {
                return Ok(Listeners {
                    v4,
                    v6: Some(v6),
                    port,
                });
            }
            // No IPv6 here: nobody can listen on [::1], and `localhost` leads to 127.0.0.1.
            Err(e) if no_ipv6(&e) => {
                tracing::debug!(
                    "no IPv6 loopback ([::1]: {e}); the callback is served on 127.0.0.1 only"
                );
                return Ok(Listeners { v4, v6: None, port });
            }
            Err(e) => {
                tracing::debug!("[::1]:{port} cannot be listened on ({e}); trying another port");
                taken = Some((port, e));
            }
        }
    }
    let last = taken.map_or_else(String::new, |(port, e)| {
        format!("; the last: [::1]:{port}: {e}")
    });
    Err(format!(
        "cannot listen on both 127.0.0.1 and [::1] on one port for the callback ({BIND_TRIES} \
         tries{last}). Another program may be waiting for the callback on [::1], so the browser \
         was not sent anywhere. Use the paste flow: `claude-tokend login` without --loopback"
    ))
}

/// Whether binding [::1] failed because the machine has no IPv6 loopback (the address or the
/// family is not there), rather than because someone holds the port.
fn no_ipv6(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::AddrNotAvailable
        || matches!(
            e.raw_os_error(),
            Some(libc::EAFNOSUPPORT | libc::EPROTONOSUPPORT | libc::EADDRNOTAVAIL)
        )
}

/// The loopback flow: listen for `/callback` on the loopback addresses, send the browser there,
/// and wait for the code. Returns the redirect URI used (it must be repeated in the exchange)
/// and the code.
pub(super) async fn loopback_code(
    settings: &Settings,
    args: &LoginArgs,
    pkce: &Pkce,
    client_id: &str,
    scope: &str,
) -> Result<(String, Secret), u8> {
    let listeners = listen(|_| 0).await.map_err(|message| {
        eprintln!("claude-tokend: {message}");
        exit::FAILURE
    })?;
    // `localhost`, as Claude Code's own redirect URI: the browser reaches it over either family.
    let redirect_uri = format!("http://localhost:{}/callback", listeners.port);
    let url = authorize_url(
        &settings.authorize_url,
        client_id,
        &redirect_uri,
        scope,
        pkce,
    );
    show_url(&url, args.no_browser)?;
    // Raised after the browser was started, which keeps the usual limit.
    let cap = connection_cap(raise_fd_limit());
    eprintln!("Waiting for the browser to come back to {redirect_uri} …");
    let wait = tokend_core::seams::loopback_wait(LOOPBACK_TIMEOUT);
    let tally = Arc::new(Tally::default());
    let served = callback::serve(
        &listeners.v4,
        listeners.v6.as_ref(),
        &pkce.state,
        cap,
        &tally,
    );
    let outcome = tokio::time::timeout(wait, served).await;
    let wrong = Tally::get(&tally.wrong_state);
    if wrong > 1 {
        eprintln!(
            "claude-tokend: warning: {wrong} callbacks carried another login attempt's state and \
             were ignored (another login attempt, or another program on this machine)"
        );
    }
    match outcome {
        Ok(Ok(code)) => Ok((redirect_uri, code)),
        Ok(Err(message)) => {
            eprintln!("claude-tokend: {message}");
            Err(exit::FAILURE)
        }
        Err(_) => {
            eprintln!(
                "claude-tokend: {}",
                no_callback(&redirect_uri, &format_duration(wait), &tally)
            );
            Err(exit::FAILURE)
        }
    }
}

/// Why the wait ended without a code, as it was: nothing came, or what did.
fn no_callback(redirect_uri: &str, waited: &str, tally: &Tally) -> String {
    let paste = "use the paste flow: `claude-tokend login` without --loopback";
    let connections = Tally::get(&tally.connections);
    if connections == 0 {
        return format!(
            "no answer on {redirect_uri} within {waited}: nothing connected to it. If the \
             browser runs on another machine, {paste}"
        );
    }
    let pushed_out = Tally::get(&tally.pushed_out);
    let wrong = Tally::get(&tally.wrong_state);
    let other = Tally::get(&tally.not_callbacks);
    let open = connections.saturating_sub(pushed_out + wrong + other);
    let parts: Vec<String> = [
        (
            pushed_out,
            "closed to make room for newer ones (more came at once than this process can keep)",
        ),
        (wrong, "with another login attempt's state"),
        (
            other,
            "not a sign-in callback (another page, no code, or no whole request in time)",
        ),
        (open, "still open without a whole request"),
    ]
    .into_iter()
    .filter(|(n, _)| *n > 0)
    .map(|(n, what)| format!("{n} {what}"))
    .collect();
    let flood = if pushed_out > 0 {
        "Another program on this machine may be flooding the port. "
    } else {
        ""
    };
    format!(
        "no callback with this login's state reached {redirect_uri} within {waited}; \
         {connections} connection{} came: {}. {flood}If the browser runs on another machine, or \
         to avoid the local port, {paste}",
        if connections == 1 { "" } else { "s" },
        parts.join(", ")
    )
}

/// Raises the soft limit on open descriptors to the hard one, so a flood of local connections
/// meets the connection cap, which closes idle ones first, before it meets the limit, which
/// would refuse any. Returns the soft limit in effect.
fn raise_fd_limit() -> u64 {
    // SAFETY: getrlimit and setrlimit only read and write the plain structs given.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 256;
        }
        let current = limit.rlim_cur;
        // Far more than MAX_CONNECTIONS needs; an unlimited hard limit is not taken literally.
        let wanted = limit.rlim_max.min(1 << 20);
        if wanted <= current {
            return current;
        }
        // macOS refuses a soft limit above OPEN_MAX (10240) whatever the hard one says.
        for target in [wanted, wanted.min(10_240)] {
            let raised = libc::rlimit {
                rlim_cur: target,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return target;
            }
        }
        current
    }
}

/// How many callback connections may be open at once with `fd_limit` descriptors.
fn connection_cap(fd_limit: u64) -> usize {
    let room = usize::try_from(fd_limit.saturating_sub(FD_RESERVE)).unwrap_or(usize::MAX);
    room.clamp(16, MAX_CONNECTIONS)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A port of [::1] someone else holds, free on 127.0.0.1; `None` without IPv6 here.
    fn held_on_v6() -> Option<(std::net::TcpListener, u16)> {
        for _ in 0..20 {
            let Ok(held) = std::net::TcpListener::bind((Ipv6Addr::LOCALHOST, 0)) else {
                eprintln!("skipped: this machine has no IPv6 loopback");
                return None;
            };
            let port = held.local_addr().unwrap().port();
            if std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
                return Some((held, port));
            }
        }
        panic!("no port held on [::1] was free on 127.0.0.1");
    }

    #[tokio::test]
    async fn a_port_held_on_ipv6_by_another_is_never_the_one_used() {
        let Some((_held, port)) = held_on_v6() else {
            return;
        };
        // The first pair lands on the held port, as it could by chance: given up for another.
        let listeners = listen(|attempt| if attempt == 0 { port } else { 0 })
            .await
            .unwrap();
        assert_ne!(listeners.port, port);
        assert!(listeners.v6.is_some(), "both families held on the new port");
        assert_eq!(listeners.v4.local_addr().unwrap().port(), listeners.port);
        assert_eq!(
            listeners.v6.as_ref().unwrap().local_addr().unwrap().port(),
            listeners.port
        );
    }

    #[tokio::test]
    async fn a_port_held_on_ipv6_at_every_try_ends_the_flow_with_advice() {
        let Some((_held, port)) = held_on_v6() else {
            return;
        };
        let Err(message) = listen(|_| port).await else {
            panic!("listened beside the holder of [::1]:{port}");
        };
        assert!(message.contains(&format!("[::1]:{port}")), "{message}");
        assert!(message.contains("without --loopback"), "{message}");
    }

    #[test]
    fn only_a_missing_ipv6_counts_as_no_ipv6() {
        for (errno, none) in [
            (libc::EAFNOSUPPORT, true),
            (libc::EADDRNOTAVAIL, true),
            (libc::EPROTONOSUPPORT, true),
            (libc::EADDRINUSE, false),
            (libc::EACCES, false),
        ] {
            assert_eq!(
                no_ipv6(&io::Error::from_raw_os_error(errno)),
                none,
                "{errno}"
            );
        }
    }
}
