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
//!
//! The browser runs as this user; another user's program may hold more connections than the
//! cap, each sending a byte a second so that none is ever idle. So when room is needed, whose
//! each connection is counts first ([`peer_uid`], Linux only): another user's connections (or
//! ones whose owner is not found) make room before any of ours, a connection of ours may push
//! out another user's even while it is active, and another user's connection never pushes out
//! one of ours. Where owners cannot be found (other systems), every connection is "not known"
//! and the rule is the one above alone.

mod peer_uid;

use std::io;
use std::net::SocketAddr;
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
/// The shortest time between two reads of the socket owners: each read lists every socket on
/// the machine, so a flood is met with one read per round for every connection queued by then
/// (up to [`ROUND_BATCH`]), not one read per connection, and at most 200 reads a second.
const ROUND_GAP: Duration = Duration::from_millis(5);
/// The most connections taken from the listeners' queues in one round. Each holds a descriptor
/// beyond the cap until it is placed, and reading the owners takes one more: they come from the
/// descriptors the caller leaves spare below its limit (64), so this stays well under that.
const ROUND_BATCH: usize = 32;

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

/// Whose the other end of a connection is. Found only when room must be made (the owners'
/// files are read then), so a connection accepted earlier is `Unresolved` until the first round.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Peer {
    Unresolved,
    /// This user's: the browser's, perhaps.
    Ours,
    Other,
    /// Looked for and not found (closed meanwhile, or a system where owners are not known).
    Unknown,
}

/// An open connection, as the accept loop sees it.
struct Open {
    clock: Arc<Clock>,
    task: AbortHandle,
    /// The peer's address and our end's, to find the peer's owner by.
    addrs: Option<(SocketAddr, SocketAddr)>,
    peer: Peer,
}

/// A connection accepted and not yet given a task.
struct Arrived {
    stream: TcpStream,
    addrs: Option<(SocketAddr, SocketAddr)>,
    peer: Peer,
}

impl Arrived {
    fn new(stream: TcpStream, peer_addr: SocketAddr) -> Self {
        let addrs = stream.local_addr().ok().map(|local| (peer_addr, local));
        Arrived {
            stream,
            addrs,
            peer: Peer::Unresolved,
        }
    }
}

/// Whose a connection is, from one read of the owners.
fn whose(owners: &peer_uid::Owners, addrs: Option<(SocketAddr, SocketAddr)>, own: u32) -> Peer {
    match addrs.and_then(|(peer, local)| owners.uid(peer, local)) {
        Some(uid) if uid == own => Peer::Ours,
        Some(_) => Peer::Other,
        None => Peer::Unknown,
    }
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
    let own = peer_uid::own_uid();
    let ports: Vec<u16> = [v4.local_addr().ok(), v6.and_then(|l| l.local_addr().ok())]
        .into_iter()
        .flatten()
        .map(|a| a.port())
        .collect();
    let mut last_round: Option<tokio::time::Instant> = None;
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
        let first = match accepted {
            Ok((stream, peer)) => {
                failing = 0;
                Arrived::new(stream, peer)
            }
            Err(e) => {
                // Out of descriptors after all (the limit was lower than it said, or other
                // files are open). Connections closed a moment ago may still hold theirs: their
                // tasks are dropped when this loop yields, so it yields first, and makes room
                // only when that did not help; with nothing to close it waits a little rather
                // than spin on the error.
                tracing::debug!("cannot accept a callback connection: {e}");
                failing += 1;
                if failing == 1 || make_room(&mut open, origin, tally, Peer::Unknown) {
                    tokio::task::yield_now().await;
                } else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                continue;
            }
        };
        let mut batch = vec![first];
        if open.len() >= cap {
            open.retain(|c| !c.task.is_finished());
        }
        if open.len() >= cap {
            // Room must be made: a round. It waits for the gap since the last one, takes every
            // connection queued by then, and reads the owners once for them all and for the
            // open connections not yet resolved.
            if let Some(last) = last_round {
                tokio::time::sleep_until(last + ROUND_GAP).await;
            }
            while batch.len() < ROUND_BATCH {
                match queued(v4, v6).await {
                    Some((stream, peer)) => batch.push(Arrived::new(stream, peer)),
                    None => break,
                }
            }
            last_round = Some(tokio::time::Instant::now());
            // Not read (out of descriptors, no /proc): the newcomers are not known, and the
            // open connections are looked for again in the next round.
            if let Some(owners) = peer_uid::read(&ports) {
                for c in open.iter_mut().filter(|c| c.peer == Peer::Unresolved) {
                    c.peer = whose(&owners, c.addrs, own);
                }
                for a in &mut batch {
                    a.peer = whose(&owners, a.addrs, own);
                }
            } else {
                for a in &mut batch {
                    a.peer = Peer::Unknown;
                }
            }
        }
        for arrived in batch {
            place(arrived, &mut open, &mut tasks, cap, origin, &state, tally).await;
        }
    }
}

/// Gives a connection just accepted a task, making room first when `cap` are open (or closing
/// it, when none may make room for it).
async fn place(
    arrived: Arrived,
    open: &mut Vec<Open>,
    tasks: &mut JoinSet<Option<Result<Secret, String>>>,
    cap: usize,
    origin: Instant,
    state: &Arc<str>,
    tally: &Arc<Tally>,
) {
    Tally::add(&tally.connections);
    if open.len() >= cap {
        open.retain(|c| !c.task.is_finished());
    }
    if open.len() >= cap {
        if !make_room(open, origin, tally, arrived.peer) {
            // Every open connection this one may push out is a request arriving now: this one
            // is closed at once (its sender tries again), never one of theirs.
            Tally::add(&tally.pushed_out);
            return;
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
    let (state, tally, watched) = (Arc::clone(state), Arc::clone(tally), Arc::clone(&clock));
    let stream = arrived.stream;
    let task =
        tasks.spawn(async move { answer_callback(stream, &state, &watched, origin, &tally).await });
    open.push(Open {
        clock,
        task,
        addrs: arrived.addrs,
        peer: arrived.peer,
    });
}

/// A connection already waiting in a listener's queue, if any (without waiting for one).
async fn queued(v4: &TcpListener, v6: Option<&TcpListener>) -> Option<(TcpStream, SocketAddr)> {
    for listener in std::iter::once(v4).chain(v6) {
        let ready = tokio::select! {
            biased;
            accepted = listener.accept() => accepted.ok(),
            () = std::future::ready(()) => None,
        };
        if ready.is_some() {
            return ready;
        }
    }
    None
}

/// Makes room for a connection whose peer is `newcomer`: closes, in this order, the
/// connection idle longest among those not ours that have sent nothing or have stalled
/// mid-request; for a newcomer of ours, the one not ours that showed life longest ago even if
/// its request is arriving (the browser is ours; a flood that keeps every connection busy must
/// not keep it out); and, unless the newcomer is another user's, the one of ours idle longest
/// that has sent nothing or stalled. Whether one was closed.
fn make_room(open: &mut Vec<Open>, origin: Instant, tally: &Tally, newcomer: Peer) -> bool {
    let now = millis_since(origin);
    let stalled = u64::try_from(STALLED.as_millis()).unwrap_or(u64::MAX);
    let idle = |c: &Open| {
        !c.clock.started.load(Ordering::Relaxed)
            || now.saturating_sub(c.clock.last.load(Ordering::Relaxed)) >= stalled
    };
    let ours = |c: &Open| c.peer == Peer::Ours;
    let pick = |fits: &dyn Fn(&Open) -> bool| {
        open.iter()
            .enumerate()
            .filter(|(_, c)| !c.task.is_finished() && fits(c))
            .min_by_key(|(_, c)| (c.clock.last.load(Ordering::Relaxed), c.clock.seq))
            .map(|(i, _)| i)
    };
    let victim = pick(&|c| !ours(c) && idle(c))
        .or_else(|| {
            if newcomer == Peer::Ours {
                pick(&|c| !ours(c))
            } else {
                None
            }
        })
        .or_else(|| {
            if newcomer == Peer::Other {
                None
            } else {
                pick(&|c| ours(c) && idle(c))
            }
        });
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
