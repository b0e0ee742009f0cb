//! Local programs against the loopback callback: a flood of idle connections must not push out
//! a browser that connects and waits a moment before it sends (CONTRACT.md: "no local process
//! can receive or starve the callback"), not even where the descriptors run short; a flood of
//! wrong callbacks is told once, not line by line; and a wait that ends without the callback
//! says what did come.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;

use super::*;

/// How long the slow browser waits between connecting and sending: long enough that, under the
/// old rule (128 connections, the oldest dropped), a flood pushed it out every time.
pub(super) const PAUSE: Duration = Duration::from_millis(300);

/// Raises this test process's soft limit on descriptors towards its hard one (its floods hold
/// hundreds of sockets) and returns the hard limit, which the `login` it starts inherits.
pub(super) fn raise_own_fd_limit() -> u64 {
    // SAFETY: getrlimit and setrlimit only read and write the plain struct given.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        if limit.rlim_cur < limit.rlim_max.min(4096) {
            limit.rlim_cur = limit.rlim_max.min(4096);
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
        limit.rlim_max
    }
}

/// Lets the command's process open only `n` descriptors (a low `ulimit -n`).
pub(super) fn limit_descriptors(cmd: &mut Command, n: libc::rlim_t) {
    use std::os::unix::process::CommandExt;
    // SAFETY: between fork and exec only setrlimit(2), async-signal-safe, is called.
    unsafe {
        cmd.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: n,
                rlim_max: n,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A local program flooding the port: it connects as fast as it can until `stop`, sends
/// nothing, and keeps the newest `keep` connections open (closing the oldest). `opened` counts
/// its connections.
fn flood(
    addr: SocketAddr,
    keep: usize,
    stop: Arc<AtomicBool>,
    opened: Arc<AtomicUsize>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut held = VecDeque::with_capacity(keep);
        while !stop.load(Ordering::Relaxed) {
            if let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                opened.fetch_add(1, Ordering::Relaxed);
                if held.len() == keep {
                    held.pop_front();
                }
                held.push_back(s);
            }
        }
    })
}

/// `n` connections that send nothing, held by the caller.
fn idle(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|i| {
            TcpStream::connect_timeout(&addr, Duration::from_secs(2))
                .unwrap_or_else(|e| panic!("idle connection {i}: {e}"))
        })
        .collect()
}

/// The request a browser sends on `s`, then its answer (bounded at 3 s).
pub(super) fn send_callback(mut s: TcpStream, port: u16, path: &str) -> std::io::Result<String> {
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n")?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    Ok(reply)
}

pub(super) fn callback_path(w: &Waiting) -> String {
    format!("/callback?code={}&state={}", w.code, w.state)
}

#[test]
fn a_slow_callback_gets_through_a_flood_of_idle_connections() {
    let hard = raise_own_fd_limit();
    // The flood holds up to 400 connections: more than the old limit of 128 by far, well within
    // what a login can keep where it may open a thousand descriptors.
    if hard < 1024 {
        eprintln!("skipped: this machine allows only {hard} open descriptors per process");
        return;
    }
    let home = TempHome::new();
    let server = TokenServer::start();
    let mut w = start_loopback(&home, &server);
    let (stop, opened) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
    );
    let flooder = flood(v4(w.port), 400, Arc::clone(&stop), Arc::clone(&opened));
    let flooding = wait_until(Duration::from_secs(3), || {
        opened.load(Ordering::Relaxed) >= 400
    });
    // The browser connects in the middle of the flood and sends after a pause, once 300 newer
    // connections have come (on a slow machine that takes longer than the pause).
    let browser = TcpStream::connect_timeout(&v4(w.port), Duration::from_secs(3));
    let before = opened.load(Ordering::Relaxed);
    std::thread::sleep(PAUSE);
    wait_until(Duration::from_secs(3), || {
        opened.load(Ordering::Relaxed) - before >= 300
    });
    let during = opened.load(Ordering::Relaxed) - before;
    let reply = browser.and_then(|s| send_callback(s, w.port, &callback_path(&w)));
    stop.store(true, Ordering::Relaxed);
    flooder.join().unwrap();
    match &reply {
        Ok(r) if r.starts_with("HTTP/1.1 200") => {}
        _ => {
            w.run.kill();
            panic!(
                "the slow callback did not get through ({during} connections came while it \
                 waited; flood started: {flooding}): {reply:?}"
            );
        }
    }
    assert!(
        during >= 300,
        "the flood was too slow to test anything: {during} connections while the browser waited"
    );
    let out = w.run.finish();
    out.expect_code(0)
        .check_eq("one exchange", server.count(), 1);
}

#[test]
fn where_descriptors_run_short_the_idle_connections_longest_idle_make_room() {
    raise_own_fd_limit();
    let home = TempHome::new();
    let server = TokenServer::start();
    // A login that may open only 300 descriptors (a low `ulimit -n`): it cannot keep every
    // connection of the flood below, and closes the ones idle longest.
    let mut w = start_loopback_as(&home, &server, &[], |cmd| limit_descriptors(cmd, 300));
    let before = idle(v4(w.port), 300);
    let browser = TcpStream::connect_timeout(&v4(w.port), Duration::from_secs(3));
    // More newer connections than the old rule kept in all (128), fewer than this login keeps.
    let after = idle(v4(w.port), 150);
    std::thread::sleep(PAUSE);
    let reply = browser.and_then(|s| send_callback(s, w.port, &callback_path(&w)));
    match &reply {
        Ok(r) if r.starts_with("HTTP/1.1 200") => {}
        _ => {
            w.run.kill();
            panic!("the slow callback was closed to make room: {reply:?}");
        }
    }
    let out = w.run.finish();
    out.expect_code(0)
        .check_eq("one exchange", server.count(), 1);
    drop((before, after));
}

#[test]
fn a_flood_of_wrong_callbacks_is_told_once_and_then_counted() {
    let home = TempHome::new();
    let server = TokenServer::start();
    let mut w = start_loopback(&home, &server);
    for i in 0..30 {
        let reply = get(v4(w.port), &format!("/callback?code=x&state=wrong-{i}"));
        assert!(
            reply
                .as_deref()
                .is_ok_and(|r| r.starts_with("HTTP/1.1 400")),
            "{reply:?}"
        );
    }
    let reply = get(v4(w.port), &callback_path(&w));
    if !reply
        .as_deref()
        .is_ok_and(|r| r.starts_with("HTTP/1.1 200"))
    {
        w.run.kill();
        panic!("{reply:?}");
    }
    let out = w.run.finish();
    let told = out
        .stderr
        .lines()
        .filter(|l| l.contains("another login attempt"))
        .count();
    out.expect_code(0)
        .check_eq("lines about wrong callbacks", told, 2)
        .expect_stderr_contains("30 callbacks carried another login attempt's state");
}

#[test]
fn a_wait_that_ends_without_the_callback_says_what_came() {
    let vars = [(
        "CLAUDE_TOKEND_TEST_LOOPBACK_WAIT_MS",
        std::path::Path::new("1500"),
    )];
    // Nothing at all: the browser may be elsewhere.
    let home = TempHome::new();
    let server = TokenServer::start();
    let w = start_loopback_as(&home, &server, &vars, |_| {});
    let out = finish_within(w, Duration::from_secs(8));
    out.expect_code(1)
        .expect_stderr_contains("nothing connected")
        .expect_stderr_contains("without --loopback");

    // Connections that were no callback: each kind is counted, and nothing is blamed on a
    // browser elsewhere alone.
    let home = TempHome::new();
    let server = TokenServer::start();
    let w = start_loopback_as(&home, &server, &vars, |_| {});
    for i in 0..2 {
        get(v4(w.port), &format!("/callback?code=x&state=wrong-{i}")).unwrap();
    }
    get(v4(w.port), "/favicon.ico").unwrap();
    let silent = idle(v4(w.port), 3);
    let out = finish_within(w, Duration::from_secs(8));
    drop(silent);
    out.expect_code(1)
        .expect_stderr_contains("6 connections came")
        .expect_stderr_contains("2 with another login attempt's state")
        .expect_stderr_contains("1 not a sign-in callback")
        .expect_stderr_contains("3 still open")
        .check(
            !out.stderr.contains("nothing connected"),
            "connections came, and it says so",
        );
    out.check_eq("nothing was sent", server.count(), 0);
}

/// Waits for a login that should end on its own by `limit`, killing it (and failing) if not.
fn finish_within(mut w: Waiting, limit: Duration) -> Out {
    let pid = w.run.id();
    let ended = wait_until(limit, || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.contains(") Z "))
            .unwrap_or(true)
    });
    if !ended {
        w.run.kill();
        panic!("login --loopback did not end within {limit:?}");
    }
    w.run.finish()
}
