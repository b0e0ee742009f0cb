//! Making this daemon known as the keeper of each login (CONTRACT.md "Another daemon is
//! named"): a `keeper <pid> <start time>` line in the program's own lock file, added the first
//! time the login is read (so a login that does not exist yet gets no lock file made for it)
//! and removed at a clean stop. A crash leaves the line, which names a process that no longer
//! runs this program and so keeps nothing. Adding it is an operation the loop polls like a
//! read (the lock may be held for a while by another process's refresh); nothing here ever
//! sets a timer, so the idle daemon wakes no more often for it.

use std::future::Future;
use std::pin::Pin;

use tokend_core::store::StoreError;

use super::ops::Op;
use super::{Clock, Daemon};

/// A login's registration in flight: the pids of the other live daemons already keeping it.
pub(super) type Registration = Op<Result<Vec<u32>, StoreError>, ()>;

impl<C: Clock> Daemon<C> {
    /// Starts the registration of every login that has been read and is not registered yet.
    pub(super) fn start_registrations(&mut self) {
        for i in 0..self.logins.len() {
            let login = &mut self.logins[i];
            if !std::mem::take(&mut login.want_register)
                || login.registered
                || self.registrations.iter().any(|r| r.index == i)
            {
                continue;
            }
            let store = login.store.clone();
            let run: Pin<Box<dyn Future<Output = _>>> = Box::pin(async move {
                let lock = store.lock(None).await?;
                Ok(lock.add_keeper())
            });
            self.registrations.push(Op {
                index: i,
                meta: (),
                run,
            });
        }
    }

    /// A registration finished: warn when another daemon already keeps the login. A failure
    /// (a directory that went away meanwhile) is tried again at the login's next good read.
    pub(super) fn registered(&mut self, index: usize, result: Result<Vec<u32>, StoreError>) {
        let _in = self.spans[index].enter();
        let login = &mut self.logins[index];
        match result {
            Ok(others) => {
                login.registered = true;
                if !others.is_empty() {
                    let pids: Vec<String> = others.iter().map(u32::to_string).collect();
                    tracing::warn!(
                        "another claude-tokend (pid {}) already keeps {}: it is safe (the locks \
                         serialize the two), but one is enough; stop the other one \
                         (`claude-tokend doctor` says which service runs it)",
                        pids.join(", "),
                        login.store.place()
                    );
                }
            }
            Err(e) => tracing::debug!("cannot record this daemon as the login's keeper: {e}"),
        }
    }

    /// At a clean stop: every registered login's line is removed, if its lock is free right
    /// now (never waited for: a line left behind names a process that is gone, which keeps
    /// nothing).
    pub(super) fn unregister(&mut self) {
        for login in self.logins.iter().filter(|l| l.registered) {
            if let Ok(Some(lock)) = login.store.try_lock() {
                lock.remove_keeper();
            }
        }
    }
}
