//! "An unsaved grant is saved as soon as it can be" (CONTRACT.md, "Interrupted, slow or absent"):
//! the daemon holding new tokens it could not save keeps retrying the save (never slower than
//! every 30 s), whatever it reads from the store meanwhile, and retries at once when its watch
//! reports a change of the store: within 2 s of the store coming back or its directory becoming
//! writable again.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use claude_tokend_e2e::*;

use crate::waste::*;

/// The contract's bound between a change the watch reports and the retried save.
const AT_ONCE: Duration = Duration::from_secs(2);

/// The daemon on a due login whose server answers after 1.5 s (time to spoil the store while
/// the request is in flight).
fn slow_answer(home: &TempHome, login: &Login) -> TokenServer {
    home.write_creds(&login.doc());
    let server = TokenServer::for_login(login);
    server.set_delay(Duration::from_millis(1500));
    server
}

fn daemon(home: &TempHome, server: &TokenServer) -> Cmd {
    Cmd::new(home)
        .server(server)
        .timeout(Duration::from_secs(120))
}

/// Replaces `path` (by rename, as an editor would) with a symlink to itself: every read of
/// the store now fails (ELOOP), for root too.
fn make_unreadable(path: &Path) {
    let tmp = path.with_extension("loop");
    std::os::unix::fs::symlink(path.file_name().unwrap(), &tmp).expect("symlink");
    fs::rename(&tmp, path).expect("renaming the symlink over the store");
}

#[test]
fn a_grant_in_hand_outlasts_an_unreadable_store_and_is_saved_within_2_s_of_its_return() {
    let home = TempHome::new();
    let login = Login::due();
    let doc = login.doc();
    let server = slow_answer(&home, &login);
    // Renames fail while the marker exists: the first save fails whatever the store holds.
    let marker = home.path().join("rename-refused");
    fs::write(&marker, b"").unwrap();
    let d = daemon(&home, &server)
        .env(RENAME_ERRNO, EACCES)
        .env(RENAME_FAIL_WHILE, &marker)
        .spawn();
    await_requests(&server, 1);
    make_unreadable(&home.creds_path());
    // The answer comes, its save fails; the daemon reads the store and finds it unreadable.
    std::thread::sleep(Duration::from_secs(3));
    fs::remove_file(&marker).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    // The store comes back as it was (by rename, as Claude Code or an editor writes it).
    replace_atomically(&home.creds_path(), &doc);
    let back = Instant::now();
    let saved = wait_until(Duration::from_secs(15), || saved_latest(&home, &server));
    let took = back.elapsed();
    let out = stop(d);
    out.check(saved, "the grant in hand was never saved")
        .check(
            took <= AT_ONCE,
            format!("saved {took:?} after the store came back"),
        )
        .check_eq(
            "refresh tokens sent",
            sent_tokens(&server),
            vec![login.refresh],
        );
    check_saved(&out, &home, &server, &doc);
}

/// Makes a directory unwritable for the daemon, or says why it cannot be done here: a normal
/// user takes away its write bit; root, whom modes do not stop, sets the immutable attribute.
/// Undone when dropped.
struct Unwritable {
    dir: PathBuf,
    immutable: bool,
}

impl Unwritable {
    fn make(dir: &Path) -> Result<Unwritable, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o500))
                .map_err(|e| e.to_string())?;
            return Ok(Unwritable {
                dir: dir.to_path_buf(),
                immutable: false,
            });
        }
        set_immutable(dir, true).map_err(|e| {
            format!(
                "running as root, and {} cannot be made immutable ({e}): its filesystem has no \
                 such attribute",
                dir.display()
            )
        })?;
        Ok(Unwritable {
            dir: dir.to_path_buf(),
            immutable: true,
        })
    }

    /// Makes it writable again; the chmod is also the change the watch reports.
    fn undo(&mut self) {
        if self.immutable {
            let _ = set_immutable(&self.dir, false);
            self.immutable = false;
        }
        let _ = fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700));
    }
}

impl Drop for Unwritable {
    fn drop(&mut self) {
        self.undo();
    }
}

#[test]
fn a_grant_in_hand_is_saved_within_2_s_of_its_directory_becoming_writable_again() {
    let home = TempHome::new();
    let login = Login::due();
    let doc = login.doc();
    let server = slow_answer(&home, &login);
    let d = daemon(&home, &server).spawn();
    await_requests(&server, 1);
    // While the request is in flight the config directory turns read-only: the temp file
    // cannot be renamed into it, and the lock directories taken for the request cannot be
    // removed from it.
    let mut unwritable = match Unwritable::make(&home.claude_dir()) {
        Ok(u) => u,
        Err(why) => {
            stop(d);
            eprintln!("skipped: {why}");
            return;
        }
    };
    // Several saves fail, and the backoff between them grows.
    std::thread::sleep(Duration::from_secs(6));
    let still_unsaved = !saved_latest(&home, &server);
    unwritable.undo();
    let writable = Instant::now();
    let saved = wait_until(Duration::from_secs(15), || saved_latest(&home, &server));
    let took = writable.elapsed();
    drop(unwritable);
    let out = stop(d);
    out.check(still_unsaved, "saved into a read-only directory?")
        .check(saved, "the grant in hand was never saved")
        .check(
            took <= AT_ONCE,
            format!("saved {took:?} after the directory became writable"),
        )
        .check_eq(
            "refresh tokens sent",
            sent_tokens(&server),
            vec![login.refresh],
        )
        .check_eq(
            "lock directories left",
            lock_dirs_present(&home),
            Vec::<String>::new(),
        );
    check_saved(&out, &home, &server, &doc);
}
