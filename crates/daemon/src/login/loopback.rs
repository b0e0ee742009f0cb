//! The callback of `login --loopback`: the browser comes back to
//! `http://localhost:PORT/callback` with the code. `localhost` may resolve to 127.0.0.1 or to
//! [::1], whichever the browser tries first, so both are listened on, on the same port (RFC 8252
//! §8.3): a port where another local user holds [::1] could hand them the callback, and is never
//! the one the browser is sent to. Each connection is served beside the others, with its own
//! bound, so idle connections cannot hold the callback back.

use std::collections::VecDeque;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use tokend_core::login::{Pkce, authorize_url};
use tokend_core::secret::Secret;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinSet};

use super::{printable, show_url};
use crate::cli::{LoginArgs, Settings};
use crate::exit;

/// How long the loopback flow waits for the browser to come back.
const LOOPBACK_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// How long one connection may take to send its request head: a browser sends it at once.
const READ_BOUND: Duration = Duration::from_secs(5);
/// Port pairs tried when the port 127.0.0.1 gave is taken on [::1]: a chance collision passes
/// on the next pair; a program that takes each port as it appears is not worth more tries.
const BIND_TRIES: u32 = 8;
/// Connections served at once. Past it the oldest is dropped: a browser sends its request the
/// moment it connects, so only a connection that sits idle is ever the oldest for long.
const MAX_CONNECTIONS: usize = 128;

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
    show_url(&url, args.no_browser);
    eprintln!("Waiting for the browser to come back to {redirect_uri} …");
    match tokio::time::timeout(LOOPBACK_TIMEOUT, serve(&listeners, &pkce.state)).await {
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

/// Serves both listeners until a callback carries this login's state: its code, or the sign-in
/// page's refusal. Every connection is a task of its own, bounded by [`READ_BOUND`]; the tasks
/// left when this returns are dropped with the set.
async fn serve(listeners: &Listeners, state: &str) -> Result<Secret, String> {
    let state: Arc<str> = Arc::from(state);
    let mut tasks = JoinSet::new();
    let mut open: VecDeque<AbortHandle> = VecDeque::new();
    loop {
        let accepted = tokio::select! {
            accepted = listeners.v4.accept() => accepted,
            accepted = accept(listeners.v6.as_ref()) => accepted,
            Some(joined) = tasks.join_next() => {
                // A task that ended without an answer (a stray request, a wrong state, one
                // dropped as the oldest) leaves the wait going.
                if let Ok(Some(answer)) = joined {
                    return answer;
                }
                continue;
            }
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors, say: wait a little rather than spin on the error.
                tracing::debug!("cannot accept a callback connection: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        open.retain(|task| !task.is_finished());
        if open.len() >= MAX_CONNECTIONS
            && let Some(oldest) = open.pop_front()
        {
            oldest.abort();
        }
        let state = Arc::clone(&state);
        open.push_back(tasks.spawn(async move { answer_callback(stream, &state).await }));
    }
}

/// The next connection on `listener`, or never when there is none.
async fn accept(listener: Option<&TcpListener>) -> io::Result<(TcpStream, std::net::SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// Answers one request on the callback listener. `Some(Ok(code))` ends the wait with a code,
/// `Some(Err(..))` ends it with the provider's refusal; `None` (a stray request, a wrong state)
/// keeps waiting.
async fn answer_callback(mut stream: TcpStream, state: &str) -> Option<Result<Secret, String>> {
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
    if tokio::time::timeout(READ_BOUND, read).await.is_err() {
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

async fn respond(stream: &mut TcpStream, status: &str, message: &str) {
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
