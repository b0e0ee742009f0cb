//! Playing Claude Code's part in a test: its mkdir lock directories, held live (mtime refreshed
//! from a thread, as a running session does every 5 s) or left abandoned (as a crashed one does).

use std::fs::{self, File, FileTimes};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

/// Sets a file's or directory's mtime (and atime) to `t`.
pub fn set_mtime(path: &Path, t: SystemTime) {
    File::open(path)
        .and_then(|f| f.set_times(FileTimes::new().set_modified(t).set_accessed(t)))
        .unwrap_or_else(|e| panic!("setting the mtime of {}: {e}", path.display()));
}

/// A lock directory as a crashed holder leaves it: made `secs` seconds ago, never touched since.
pub fn abandoned_lock(path: &Path, secs: u64) {
    fs::create_dir(path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
    set_mtime(path, SystemTime::now() - Duration::from_secs(secs));
}

/// A lock directory held by a live "Claude Code": made now, its mtime refreshed from a thread
/// until released (or dropped, which stops touching and leaves the directory).
pub struct LiveLock {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    toucher: Option<JoinHandle<()>>,
}

impl LiveLock {
    /// Held, touched every 500 ms.
    pub fn hold(path: &Path) -> LiveLock {
        LiveLock::hold_every(path, Duration::from_millis(500))
    }

    /// Held, touched every `every`.
    pub fn hold_every(path: &Path, every: Duration) -> LiveLock {
        fs::create_dir(path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        let stop = Arc::new(AtomicBool::new(false));
        let toucher = {
            let stop = Arc::clone(&stop);
            let path = path.to_path_buf();
            std::thread::spawn(move || {
                let step = Duration::from_millis(50).min(every);
                let mut since = Duration::ZERO;
                while !stop.load(Ordering::SeqCst) {
                    if since >= every {
                        since = Duration::ZERO;
                        if path.is_dir() {
                            set_mtime(&path, SystemTime::now());
                        }
                    }
                    std::thread::sleep(step);
                    since += step;
                }
            })
        };
        LiveLock {
            path: path.to_path_buf(),
            stop,
            toucher: Some(toucher),
        }
    }

    /// The lock directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn stop_touching(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.toucher.take() {
            t.join().expect("the touch thread");
        }
    }

    /// Stops touching and removes the directory, as Claude Code does when it is done. The
    /// directory must still be there: nobody else may have removed a live lock.
    pub fn release(mut self) {
        self.stop_touching();
        fs::remove_dir(&self.path).unwrap_or_else(|e| {
            panic!(
                "removing the test's own lock {} (it should still exist): {e}",
                self.path.display()
            )
        });
    }
}

impl Drop for LiveLock {
    fn drop(&mut self) {
        self.stop_touching();
    }
}
