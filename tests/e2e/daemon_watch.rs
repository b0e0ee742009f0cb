//! "An overflowing watch loses nothing" (CONTRACT.md, "Interrupted, slow or absent"): when the
//! kernel drops change events (the inotify queue overflowed), the daemon re-reads every login at
//! once instead of noticing a change at its once-a-minute check.
//!
//! The overflow is made without root: the daemon is stopped (SIGSTOP) so its watcher reads
//! nothing, more events than the queue holds are made in the watched directory, then the
//! login is changed (that event is dropped), and the daemon continues.

use std::time::{Duration, Instant};

use claude_tokend_e2e::*;

/// `/proc/sys/fs/inotify/max_queued_events`: how many events one queue holds.
fn queue_size() -> Option<usize> {
    std::fs::read_to_string("/proc/sys/fs/inotify/max_queued_events")
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[test]
fn a_change_lost_in_an_overflowed_watch_queue_is_noticed_at_once() {
    let Some(size) = queue_size().filter(|n| *n <= 200_000) else {
        eprintln!(
            "skipped: /proc/sys/fs/inotify/max_queued_events is unreadable or too large to \
             overflow cheaply"
        );
        return;
    };
    let home = TempHome::new();
    home.write_creds(&Login::fresh().doc());
    let due = Login::due();
    let server = TokenServer::for_login(&due);
    let d = Cmd::new(&home)
        .server(&server)
        .timeout(Duration::from_secs(90))
        .spawn();
    // Settled and watching; its next look at the clock is about a minute away.
    std::thread::sleep(Duration::from_millis(1500));
    send_signal(&d, libc::SIGSTOP);
    // Distinct names: identical events in a row would be merged into one.
    for i in 0..size + 100 {
        std::fs::File::create(home.claude_dir().join(format!("f{i}"))).expect("create");
    }
    // The queue is full: this change is dropped, and only the overflow is reported.
    replace_atomically(&home.creds_path(), &due.doc());
    send_signal(&d, libc::SIGCONT);
    let continued = Instant::now();
    let refreshed = wait_until(Duration::from_secs(10), || server.count() == 1);
    let took = continued.elapsed();
    let out = stop(d);
    out.check(refreshed, "the new login was not noticed").check(
        took <= Duration::from_secs(5),
        format!("noticed {took:?} after the overflow"),
    );
}
