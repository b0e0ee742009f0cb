//! Serving the connections of the loopback callback, so that no local process can starve the
//! one the browser makes. Any local process can connect to the port; a flood of connections
//! that send nothing (or a byte, then nothing) must not push the browser's out, even one that
//! connects and waits a moment before it sends (a preconnected socket, a busy machine).
//!
//! So: each connection is a task of its own; as many are kept as the descriptors allow (the
//! caller raises the limit), up to [`MAX_CONNECTIONS`]; and when that many are open, the one
//! pushed out is the connection idle longest among those that have sent nothing, or have
//! stalled in the middle of a request. A request that is arriving is never cut off: a browser
//! sends its request in one burst, within the [`HEAD_BOUND`] counted from its first byte.
//! What arrived is counted ([`Tally`]), so a wait that ends without a callback says so truly.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokend_core::secret::Secret;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinSet};

use super::short;

/// The most connections kept open at once, whatever the descriptors allow: enough that a
/// flood of thousands of connections a second leaves a connection seconds before it is pushed
/// out, little enough (a few KiB each) that it costs no real memory.
pub(super) const MAX_CONNECTIONS: usize = 8192;
/// How long a request may take to arrive whole, from its first byte: a browser sends it at once.
const HEAD_BOUND: Duration = Duration::from_secs(5);
/// How long a connection that sends nothing is kept when nothing presses for room.
const SILENT_BOUND: Duration = Duration::from_secs(60);
/// A request that has started and then sent nothing for this long has stalled: it may be pushed
/// out for room, as a connection that sent nothing may.
const STALLED: Duration = Duration::from_secs(1);
/// The longest request head read: a browser's is a few hundred bytes.
const HEAD_LIMIT: usize = 16 * 1024;

/// What came to the callback port, for the message when no callback with this login's state
/// does.
#[derive(Default)]
pub(super) struct Tally {
    pub(super) connections: AtomicUsize,
    /// Closed to make room for newer ones (idle or stalled when there was none to spare).
    pub(super) pushed_out: AtomicUsize,
    /// Callbacks that carried another login attempt's state.
    pub(super) wrong_state: AtomicUsize,
    /// Anything else that was no callback: another page, no code, nothing sent, or a request
    /// that did not arrive whole in time.
    pub(super) not_callbacks: AtomicUsize,
}

impl Tally {
    fn add(counter: &AtomicUsize) -> usize {
        counter.fetch_add(1, Ordering::Relaxed)
    }

    pub(super) fn get(counter: &AtomicUsize) -> usize {
        counter.load(Ordering::Relaxed)
    }
}

/// When a connection last showed life, and whether its request has started: read by the accept
/// loop to choose which connection to push out.
struct Clock {
    /// Its place in the order of arrival: of two idle since the same millisecond, the older
    /// goes first.
    seq: u64,
    /// Milliseconds from the start of the wait to the connection's last byte (or its accept).
    last: AtomicU64,
    started: AtomicBool,
}

impl Clock {
    fn touch(&self, origin: Instant) {
        self.last.store(millis_since(origin), Ordering::Relaxed);
    }
}

fn millis_since(origin: Instant) -> u64 {
    u64::try_from(origin.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// An open connection, as the accept loop sees it.
struct Open {
    clock: Arc<Clock>,
    task: AbortHandle,
}

/// Serves both listeners until a callback carries this login's state: its code, or the sign-in
/// page's refusal. At most `cap` connections are open at once (see the module's rule for which
/// one makes room); the tasks left when this returns are dropped with the set.
pub(super) async fn serve(
    v4: &TcpListener,
    v6: Option<&TcpListener>,
    state: &str,
    cap: usize,
    tally: &Arc<Tally>,
) -> Result<Secret, String> {
    let origin = Instant::now();
    let state: Arc<str> = Arc::from(state);
    let mut tasks = JoinSet::new();
    let mut open: Vec<Open> = Vec::new();
    // Accepts that failed in a row (out of descriptors, most likely).
    let mut failing = 0u32;
    loop {
        let accepted = tokio::select! {
            accepted = v4.accept() => accepted,
            accepted = accept(v6) => accepted,
            Some(joined) = tasks.join_next() => {
                // A task that ended without an answer (a stray request, a wrong state, one
                // pushed out) leaves the wait going.
                if let Ok(Some(answer)) = joined {
                    return answer;
                }
                continue;
            }
        };
        let stream = match accepted {
            Ok((stream, _)) => {
                failing = 0;
                stream
            }
            Err(e) => {
                // Out of descriptors after all (the limit was lower than it said, or other
                // files are open). Connections closed a moment ago may still hold theirs: their
                // tasks are dropped when this loop yields, so it yields first, and makes room
                // only when that did not help; with nothing to close it waits a little rather
                // than spin on the error.
                tracing::debug!("cannot accept a callback connection: {e}");
                failing += 1;
                if failing == 1 || make_room(&mut open, origin, tally) {
                    tokio::task::yield_now().await;
                } else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                continue;
            }
        };
        Tally::add(&tally.connections);
        if open.len() >= cap {
            open.retain(|c| !c.task.is_finished());
        }
        if open.len() >= cap {
            if !make_room(&mut open, origin, tally) {
                // Every open connection is a request arriving now: this one is closed at once
                // (its sender tries again), never one of theirs.
                Tally::add(&tally.pushed_out);
                continue;
            }
            // The task just aborted holds its descriptor until it is dropped, which happens
            // when this loop yields: yielding now keeps the descriptors in use near the cap
            // under a flood, rather than a hundred over it.
            tokio::task::yield_now().await;
        }
        let clock = Arc::new(Clock {
            seq: u64::try_from(Tally::get(&tally.connections)).unwrap_or(u64::MAX),
            last: AtomicU64::new(millis_since(origin)),
            started: AtomicBool::new(false),
        });
        let (state, tally, watched) = (Arc::clone(&state), Arc::clone(tally), Arc::clone(&clock));
        let task = tasks
            .spawn(async move { answer_callback(stream, &state, &watched, origin, &tally).await });
        open.push(Open { clock, task });
    }
}

/// Closes the connection idle longest among those that have sent nothing or have stalled
/// mid-request; never one whose request is arriving. Whether one was closed.
fn make_room(open: &mut Vec<Open>, origin: Instant, tally: &Tally) -> bool {
    let now = millis_since(origin);
    let stalled = u64::try_from(STALLED.as_millis()).unwrap_or(u64::MAX);
    let victim = open
        .iter()
        .enumerate()
        .filter(|(_, c)| !c.task.is_finished())
        .map(|(i, c)| {
            let last = c.clock.last.load(Ordering::Relaxed);
            (
                i,
                (last, c.clock.seq),
                c.clock.started.load(Ordering::Relaxed),
            )
        })
        .filter(|&(_, (last, _), started)| !started || now.saturating_sub(last) >= stalled)
        .min_by_key(|&(_, idle_since, _)| idle_since)
        .map(|(i, _, _)| i);
    match victim {
        Some(i) => {
            open.swap_remove(i).task.abort();
            Tally::add(&tally.pushed_out);
            true
        }
        None => false,
    }
}

/// The next connection on `listener`, or never when there is none.
async fn accept(listener: Option<&TcpListener>) -> io::Result<(TcpStream, std::net::SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// Reads a request head: up to [`SILENT_BOUND`] for its first byte, then [`HEAD_BOUND`] from
/// that byte for the rest. `None` when none arrived whole.
async fn read_head(stream: &mut TcpStream, clock: &Clock, origin: Instant) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    let mut buf = [0u8; 2048];
    match tokio::time::timeout(SILENT_BOUND, stream.read(&mut buf)).await {
        Ok(Ok(n)) if n > 0 => head.extend_from_slice(&buf[..n]),
        _ => return None,
    }
    clock.touch(origin);
    clock.started.store(true, Ordering::Relaxed);
    let deadline = tokio::time::Instant::now() + HEAD_BOUND;
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() >= HEAD_LIMIT {
            return None;
        }
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => head.extend_from_slice(&buf[..n]),
            _ => return None,
        }
        clock.touch(origin);
    }
    Some(head)
}

/// Answers one request on the callback listener. `Some(Ok(code))` ends the wait with a code,
/// `Some(Err(..))` ends it with the provider's refusal; `None` (a stray request, a wrong state)
/// keeps waiting.
async fn answer_callback(
    mut stream: TcpStream,
    state: &str,
    clock: &Clock,
    origin: Instant,
    tally: &Tally,
) -> Option<Result<Secret, String>> {
    let Some(head) = read_head(&mut stream, clock, origin).await else {
        Tally::add(&tally.not_callbacks);
        return None;
    };
    let text = String::from_utf8_lossy(&head);
    let target = text
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("GET "))
        .and_then(|l| l.split(' ').next())
        .unwrap_or("");
    let url = tokend_core::settings::Url::parse(&format!("http://localhost{target}")).ok();
    let Some(url) = url.filter(|u| u.path() == "/callback") else {
        Tally::add(&tally.not_callbacks);
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
        // Said once; the rest are counted and told when the wait ends (a program that sends
        // thousands must not flood the terminal).
        if Tally::add(&tally.wrong_state) == 0 {
            tracing::warn!(
                "ignored a callback whose state does not match this login (another login \
                 attempt, or another program); still waiting"
            );
        }
        return None;
    }
    if let Some(error) = param("error") {
        respond(
            &mut stream,
            "200 OK",
            "Sign-in was not completed. You may close this window.",
        )
        .await;
        let detail = param("error_description")
            .filter(|d| !d.trim().is_empty())
            .map(|d| format!(" ({})", short(&d)))
            .unwrap_or_default();
        return Some(Err(format!(
            "the sign-in page reported `{}`{detail}; nothing was saved",
            short(&error)
        )));
    }
    match param("code").filter(|c| !c.trim().is_empty()) {
        Some(code) => {
            // The exchange is still to come: the page says where the outcome will be, not that
            // the sign-in is done.
            respond(
                &mut stream,
                "200 OK",
                "claude-tokend received the sign-in code. Look in the terminal for the outcome; \
                 you may close this window.",
            )
            .await;
            Some(Ok(Secret::new(code)))
        }
        None => {
            Tally::add(&tally.not_callbacks);
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
