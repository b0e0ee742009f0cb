//! Another user's program against the loopback callback: more connections than the login may
//! keep, each sending a byte every 0.3 s (so none is ever idle or stalled) and connecting again
//! when it is closed. The browser runs as this user, and its callback must still get through
//! (CONTRACT.md: "no local process can receive or starve the callback").
//!
//! Linux only: the program's connections are opened by a thread that takes another uid with
//! a raw setresuid(2), which changes that thread's credentials alone; it needs root.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;

use super::flood::{PAUSE, callback_path, limit_descriptors, raise_own_fd_limit, send_callback};
use super::*;

/// The user the flood runs as: not root, not this test's.
const OTHER_UID: libc::uid_t = 1000;
/// How often each connection of the flood sends a byte: well within the second after which a
/// request that has started counts as stalled.
const TRICKLE: Duration = Duration::from_millis(300);

/// Another user's program holding `keep` connections to `addr` until `stop`, each sending a
/// byte at once and then every [`TRICKLE`], each replaced as soon as it is closed. `opened`
/// counts its connections.
fn busy_flood_as_other_user(
    addr: SocketAddr,
    keep: usize,
    stop: Arc<AtomicBool>,
    opened: Arc<AtomicUsize>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        // SAFETY: the raw system call (not libc's setresuid, which changes every thread) sets
        // this thread's effective uid only; the thread ends with the flood. -1: unchanged.
        let set = unsafe {
            libc::syscall(
                libc::SYS_setresuid,
                -1 as libc::c_long,
                libc::c_long::from(OTHER_UID),
                -1 as libc::c_long,
            )
        };
        assert_eq!(set, 0, "setresuid: {}", std::io::Error::last_os_error());
        let mut held: Vec<(TcpStream, Instant)> = Vec::with_capacity(keep);
        let mut buf = [0u8; 512];
        while !stop.load(Ordering::Relaxed) {
            while held.len() < keep {
                let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200))
                else {
                    break;
                };
                opened.fetch_add(1, Ordering::Relaxed);
                if s.write_all(b"G").is_ok() && s.set_nonblocking(true).is_ok() {
                    held.push((s, Instant::now()));
                }
            }
            // Closed ones (an end of file, a reset) go; the rest send their byte when due.
            held.retain_mut(|(s, sent)| {
                match s.read(&mut buf) {
                    Ok(0) => return false,
                    Err(e) if e.kind() != std::io::ErrorKind::WouldBlock => return false,
                    _ => {}
                }
                if sent.elapsed() >= TRICKLE {
                    *sent = Instant::now();
                    return s.write_all(b"E").is_ok();
                }
                true
            });
            std::thread::sleep(Duration::from_millis(10));
        }
    })
}

#[test]
fn another_users_flood_of_busy_connections_cannot_keep_the_callback_out() {
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root to open connections as another user");
        return;
    }
    raise_own_fd_limit();
    let home = TempHome::new();
    let server = TokenServer::start();
    // 300 descriptors: the login keeps some 236 connections, fewer than the flood holds.
    let mut w = start_loopback_as(&home, &server, &[], |cmd| limit_descriptors(cmd, 300));
    let (stop, opened) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
    );
    let flooder = busy_flood_as_other_user(v4(w.port), 400, Arc::clone(&stop), Arc::clone(&opened));
    let flooding = wait_until(Duration::from_secs(3), || {
        opened.load(Ordering::Relaxed) >= 400
    });
    // Every connection the login keeps has now sent a byte within the last 0.3 s.
    std::thread::sleep(Duration::from_secs(1));
    // The browser, as this user, connects and sends after a pause, as a slow one does.
    let browser = TcpStream::connect_timeout(&v4(w.port), Duration::from_secs(3));
    std::thread::sleep(PAUSE);
    let reply = browser.and_then(|s| send_callback(s, w.port, &callback_path(&w)));
    stop.store(true, Ordering::Relaxed);
    let flood_ended = flooder.join();
    let total = opened.load(Ordering::Relaxed);
    match &reply {
        Ok(r) if r.starts_with("HTTP/1.1 200") => {}
        _ => {
            w.run.kill();
            panic!(
                "another user's flood kept the callback out ({total} connections; flood \
                 started: {flooding}): {reply:?}"
            );
        }
    }
    assert!(flood_ended.is_ok(), "the flood's thread failed");
    assert!(
        flooding,
        "the flood was too slow to test anything: {total} connections"
    );
    let out = w.run.finish();
    out.expect_code(0)
        .check_eq("one exchange", server.count(), 1);
}
