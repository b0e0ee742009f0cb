//! A mirror directory belongs to its consumer, who may plant anything in it (CONTRACT.md "A
//! mirror directory belongs to its consumer and is treated as hostile"). Whatever it plants
//! (a link, symbolic or hard, to a host file or to the source, a FIFO, a hard link, a huge or half-written file,
//! a login of its own, the directory itself swapped for a link), the program never writes
//! outside the directory, never reads a host file into the mirror, never touches the source and
//! never blocks: the planted file is replaced by a new regular file, or the mirror is skipped.
//!
//! Each test snapshots the whole home but the mirror directory and the source's directory, and
//! checks nothing there changed. Host files hold a recognizable secret that must never show up
//! in a mirror.

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, symlink};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use claude_tokend_e2e::*;
use serde_json::json;

const SOON: Duration = Duration::from_secs(8);

/// A home with a fresh login, the server that knows it, a mirror directory (`HOME/mnt/claude`)
/// and a host file outside it holding a secret.
struct Scene {
    home: TempHome,
    login: Login,
    server: TokenServer,
    dir: PathBuf,
    host: PathBuf,
    secret: String,
}

impl Scene {
    fn new() -> Scene {
        let home = TempHome::new();
        let login = Login::fresh();
        home.write_creds(&login.doc());
        let server = TokenServer::for_login(&login);
        let dir = home.path().join("mnt").join("claude");
        fs::create_dir_all(&dir).unwrap();
        let secret = format!("HOST-SECRET-{}", random_alnum(24));
        let host = home.path().join("host").join("private.json");
        write_creds_at(
            &host,
            &json!({"hostSecret": secret, "claudeAiOauth": {"accessToken": secret, "expiresAt": 1}}),
        );
        Scene {
            home,
            login,
            server,
            dir,
            host,
            secret,
        }
    }

    fn mirror(&self) -> PathBuf {
        mirror_path(&self.dir)
    }

    /// Everything in the home outside the mirror directory and the source's directory.
    fn outside(&self) -> std::collections::BTreeMap<PathBuf, String> {
        let claude = self.home.claude_dir();
        snapshot(self.home.path(), &[&self.dir, &claude])
    }

    fn once(&self) -> Out {
        Cmd::new(&self.home)
            .server(&self.server)
            .args(["--once", "--mirror"])
            .arg(&self.dir)
            .timeout(Duration::from_secs(20))
            .run()
    }

    fn daemon(&self) -> Running {
        Cmd::new(&self.home)
            .server(&self.server)
            .arg("--mirror")
            .arg(&self.dir)
            .timeout(Duration::from_secs(60))
            .spawn()
    }

    /// The mirror is a fresh regular file holding the source's copy and nothing else (no
    /// consumer keys survive: the planted file was never read), and the secret is not in it.
    fn mirror_problem(&self) -> Option<String> {
        if let Some(why) = mirror_mismatch(&self.dir, &self.home.read_creds(), &json!({})) {
            return Some(why);
        }
        let text = fs::read_to_string(self.mirror()).unwrap_or_default();
        text.contains(&self.secret)
            .then(|| format!("the host file's secret is in the mirror:\n{text}"))
    }

    /// Checks after a run: the mirror replaced as it must be, the host file and the source as
    /// they were, nothing new or changed outside the directory.
    #[track_caller]
    fn expect_contained(
        &self,
        out: &Out,
        host_before: &FileState,
        source_before: &FileState,
        outside_before: &std::collections::BTreeMap<PathBuf, String>,
    ) {
        out.check(
            self.mirror_problem().is_none(),
            format!("the mirror: {:?}", self.mirror_problem()),
        )
        .expect_untouched(&self.host, host_before)
        .expect_untouched(&self.home.creds_path(), source_before);
        let diff = snapshot_diff(outside_before, &self.outside());
        out.check(
            diff.is_empty(),
            format!("written outside the mirror: {diff:#?}"),
        )
        .expect_no_secret(&self.login.secrets());
    }
}

fn mkfifo(path: &Path) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: mkfifo(3) with a valid NUL-terminated path.
    let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
    assert_eq!(rc, 0, "mkfifo {}", path.display());
}

#[test]
fn a_mirror_file_linked_to_a_host_file_is_replaced_and_the_host_file_never_read() {
    let sc = Scene::new();
    symlink(&sc.host, sc.mirror()).unwrap();
    // A guess at a temp file's name, linked to another host file.
    let other = sc.home.path().join("host").join("other.json");
    write_raw_at(&other, sc.secret.as_bytes());
    symlink(&other, sc.dir.join(".credentials.json.tmp")).unwrap();
    let (host, source, outside) = (FileState::of(&sc.host), sc.home.state(), sc.outside());
    let other_before = FileState::of(&other);
    let out = sc.once();
    out.expect_code(0);
    sc.expect_contained(&out, &host, &source, &outside);
    out.expect_untouched(&other, &other_before);
}

/// A link to the source itself (a login's store) is either refused at start (exit 2, left
/// as it is) or replaced by a regular file: the source is never written through it and its
/// refresh token never copied.
#[test]
fn a_mirror_file_linked_to_the_source_never_reaches_the_source() {
    let sc = Scene::new();
    symlink(sc.home.creds_path(), sc.mirror()).unwrap();
    let (source, outside) = (sc.home.state(), sc.outside());
    let out = sc.once();
    out.check(
        out.code == 0 || out.code == 2,
        "exit 0 (the link replaced) or 2 (refused)",
    )
    .expect_untouched(&sc.home.creds_path(), &source);
    if out.code == 0 {
        out.check(
            sc.mirror_problem().is_none(),
            format!("the mirror: {:?}", sc.mirror_problem()),
        );
    }
    let diff = snapshot_diff(&outside, &sc.outside());
    out.check(
        diff.is_empty(),
        format!("written outside the mirror: {diff:#?}"),
    );

    // Planted while the daemon runs: replaced on the next check.
    fs::remove_file(sc.mirror()).unwrap();
    let d = sc.daemon();
    if let Err(why) = wait_for_mirror(&sc.dir, &sc.home.creds_path(), &json!({}), SOON) {
        panic!("written at start: {why}\n{}", stop(d).context());
    }
    let source = sc.home.state();
    fs::remove_file(sc.mirror()).unwrap();
    symlink(sc.home.creds_path(), sc.mirror()).unwrap();
    send_signal(&d, libc::SIGHUP);
    let replaced = wait_until(SOON, || sc.mirror_problem().is_none());
    let out = stop(d);
    out.check(
        replaced,
        format!("the link replaced: {:?}", sc.mirror_problem()),
    )
    .expect_untouched(&sc.home.creds_path(), &source);
}

#[test]
fn a_fifo_in_place_of_the_mirror_file_never_blocks() {
    let sc = Scene::new();
    mkfifo(&sc.mirror());
    let (host, source, outside) = (FileState::of(&sc.host), sc.home.state(), sc.outside());
    let out = sc.once();
    out.expect_code(0).check(
        out.elapsed < Duration::from_secs(5),
        "--once finished promptly",
    );
    sc.expect_contained(&out, &host, &source, &outside);

    // The daemon: a FIFO planted while it runs. The mirror `--once` wrote goes first, so the
    // daemon's own write at start tells it is up (and handles SIGHUP) before the FIFO comes.
    fs::remove_file(sc.mirror()).unwrap();
    let d = sc.daemon();
    if let Err(why) = wait_for_mirror(&sc.dir, &sc.home.creds_path(), &json!({}), SOON) {
        panic!("written at start: {why}\n{}", stop(d).context());
    }
    fs::remove_file(sc.mirror()).unwrap();
    mkfifo(&sc.mirror());
    send_signal(&d, libc::SIGHUP);
    let replaced = wait_until(SOON, || sc.mirror_problem().is_none());
    // Still answering signals at once: it is not stuck opening the FIFO.
    let t = Instant::now();
    let out = stop(d);
    out.check(
        replaced,
        format!("the FIFO replaced: {:?}", sc.mirror_problem()),
    )
    .check(
        t.elapsed() < Duration::from_secs(2),
        format!("stopped in {:?}", t.elapsed()),
    );
    sc.expect_contained(&out, &host, &source, &outside);
}

#[test]
fn a_mirror_file_hard_linked_to_a_host_file_is_replaced_and_the_host_file_unchanged() {
    let sc = Scene::new();
    fs::hard_link(&sc.host, sc.mirror()).unwrap();
    let (source, outside) = (sc.home.state(), sc.outside());
    let host = FileState::of(&sc.host);
    let out = sc.once();
    out.expect_code(0).check_eq(
        "the host file has its one link back",
        fs::metadata(&sc.host).unwrap().nlink(),
        1,
    );
    sc.expect_contained(&out, &host, &source, &outside);
}

/// A hard link to the source itself: refused at start (exit 2, left alone) or replaced; the
/// source is never written through it. Planted while the daemon runs: replaced.
#[test]
fn a_mirror_file_hard_linked_to_the_source_never_reaches_the_source() {
    let sc = Scene::new();
    fs::hard_link(sc.home.creds_path(), sc.mirror()).unwrap();
    let source = sc.home.state();
    let out = sc.once();
    out.check(
        out.code == 0 || out.code == 2,
        "exit 0 (the link replaced) or 2 (refused)",
    )
    .expect_untouched(&sc.home.creds_path(), &source);
    if out.code == 0 {
        out.check(
            sc.mirror_problem().is_none(),
            format!("the mirror: {:?}", sc.mirror_problem()),
        );
    }

    fs::remove_file(sc.mirror()).unwrap();
    let d = sc.daemon();
    if let Err(why) = wait_for_mirror(&sc.dir, &sc.home.creds_path(), &json!({}), SOON) {
        panic!("written at start: {why}\n{}", stop(d).context());
    }
    fs::remove_file(sc.mirror()).unwrap();
    fs::hard_link(sc.home.creds_path(), sc.mirror()).unwrap();
    let source = sc.home.state();
    send_signal(&d, libc::SIGHUP);
    let replaced = wait_until(SOON, || sc.mirror_problem().is_none());
    let out = stop(d);
    out.check(
        replaced,
        format!("the link replaced: {:?}", sc.mirror_problem()),
    )
    .expect_untouched(&sc.home.creds_path(), &source)
    .check_eq(
        "the source has its one link back",
        fs::metadata(sc.home.creds_path()).unwrap().nlink(),
        1,
    );
}

/// A directory where the mirror file belongs: an empty one is replaced by the file; one with
/// something in it is never emptied (the run warns, naming the mirror, and exits as the
/// source alone would).
#[test]
fn a_directory_in_place_of_the_mirror_file_is_never_emptied() {
    let sc = Scene::new();
    fs::create_dir(sc.mirror()).unwrap();
    let (host, source, outside) = (FileState::of(&sc.host), sc.home.state(), sc.outside());
    let out = sc.once();
    out.expect_code(0);
    sc.expect_contained(&out, &host, &source, &outside);

    fs::remove_file(sc.mirror()).unwrap();
    let kept = sc.mirror().join("theirs.txt");
    write_raw_at(&kept, b"the consumer's own\n");
    let kept_before = FileState::of(&kept);
    let out = sc.once();
    out.expect_code(0)
        .check(
            out.stderr.contains(&sc.dir.display().to_string()),
            "the warning names the mirror",
        )
        .expect_untouched(&kept, &kept_before)
        .expect_untouched(&sc.home.creds_path(), &source)
        .check_eq(
            "nothing else in the consumer's directory",
            list_names(&sc.mirror()),
            vec!["theirs.txt".to_owned()],
        );
}

#[test]
fn a_huge_mirror_file_is_not_read_whole_and_is_replaced() {
    let sc = Scene::new();
    // Valid JSON past 1 MiB: read whole it would parse and its keys would be kept.
    let pad = "x".repeat(2 << 20);
    let huge = json!({"pad": pad, "hostSecret": sc.secret});
    write_creds_at(&sc.mirror(), &huge);
    let (host, source, outside) = (FileState::of(&sc.host), sc.home.state(), sc.outside());
    let out = sc.once();
    out.expect_code(0).check(
        out.elapsed < Duration::from_secs(5),
        "--once finished promptly",
    );
    sc.expect_contained(&out, &host, &source, &outside);
    out.check(
        fs::metadata(sc.mirror()).unwrap().len() < 64 * 1024,
        "the mirror is a small document again",
    );
}

/// An unparsable mirror is read again after about a second (the consumer may be mid-write)
/// and then replaced by a fresh document.
#[test]
fn a_half_written_mirror_file_is_read_again_then_replaced() {
    let sc = Scene::new();
    write_raw_at(&sc.mirror(), b"{\"mcpOAuth\": {\"half\": \"writ");
    let (host, source, outside) = (FileState::of(&sc.host), sc.home.state(), sc.outside());
    let out = sc.once();
    out.expect_code(0)
        .check(
            out.elapsed >= Duration::from_millis(900),
            "waited about a second before replacing it",
        )
        .check(
            out.elapsed < Duration::from_secs(5),
            "--once finished promptly",
        );
    sc.expect_contained(&out, &host, &source, &outside);
}

/// A consumer that finishes its write within the second is not trampled: its keys survive.
#[test]
fn a_consumer_finishing_its_write_within_the_second_keeps_its_keys() {
    let sc = Scene::new();
    let d = sc.daemon();
    if let Err(why) = wait_for_mirror(&sc.dir, &sc.home.creds_path(), &json!({}), SOON) {
        panic!("written at start: {why}\n{}", stop(d).context());
    }
    // Half of its new document now, the rest 300 ms later (in place, as a plain editor).
    let whole = serde_json::to_string_pretty(&consumer_keys()).unwrap();
    write_raw_at(&sc.mirror(), &whole.as_bytes()[..whole.len() / 2]);
    send_signal(&d, libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(300));
    write_raw_at(&sc.mirror(), whole.as_bytes());
    let got = wait_for_mirror(&sc.dir, &sc.home.creds_path(), &consumer_keys(), SOON);
    let out = stop(d);
    if let Err(why) = got {
        panic!(
            "the consumer's keys kept beside the login: {why}\n{}",
            out.context()
        );
    }
}

/// A login signed in inside the mirror later (a refresh token appears there) is left alone
/// and logged while it is there; once it is gone the mirror is written again.
#[test]
fn a_login_of_the_consumers_own_in_the_mirror_is_left_alone_until_gone() {
    let sc = Scene::new();
    let log = sc.home.path().join("daemon.log");
    let d = Cmd::new(&sc.home)
        .server(&sc.server)
        .arg("--mirror")
        .arg(&sc.dir)
        .env("CLAUDE_TOKEND_TEST_MIRROR_CHECK_MS", "200")
        .stderr_to(&log)
        .timeout(Duration::from_secs(60))
        .spawn();
    if let Err(why) = wait_for_mirror(&sc.dir, &sc.home.creds_path(), &json!({}), SOON) {
        panic!("written at start: {why}\n{}", stop(d).context());
    }
    let theirs = Login::fresh();
    write_creds_at(&sc.mirror(), &theirs.doc());
    let theirs_before = FileState::of(&sc.mirror());
    let logged_before = fs::read_to_string(&log).unwrap_or_default().len();
    // The source changes: the mirror would be rewritten, were it not someone's login.
    replace_atomically(&sc.home.creds_path(), &Login::fresh().doc());
    let dir_text = sc.dir.display().to_string();
    let logged = wait_until(SOON, || {
        fs::read_to_string(&log).is_ok_and(|l| l[logged_before.min(l.len())..].contains(&dir_text))
    });
    // A few periodic checks (200 ms each) and a SIGHUP later, still untouched.
    send_signal(&d, libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(1200));
    let still = FileState::of(&sc.mirror());
    fs::remove_file(sc.mirror()).unwrap();
    let rewritten = wait_for_mirror(&sc.dir, &sc.home.creds_path(), &json!({}), SOON);
    let out = stop(d);
    let log_text = fs::read_to_string(&log).unwrap_or_default();
    out.check(
        logged,
        format!("the skipped mirror was logged:\n{log_text}"),
    )
    .check_eq(
        "the consumer's login left byte for byte",
        still,
        theirs_before,
    )
    .check(
        rewritten.is_ok(),
        format!("written again once it was gone: {rewritten:?}"),
    );
}

/// `DIR` swapped for a link to another directory after start: nothing is written there (the
/// directory is opened without following links at every write), the failure is logged, and
/// once a real directory is back the mirror is written again.
#[test]
fn a_mirror_directory_swapped_for_a_link_is_not_written_through() {
    let sc = Scene::new();
    let elsewhere = sc.home.path().join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    let log = sc.home.path().join("daemon.log");
    let d = Cmd::new(&sc.home)
        .server(&sc.server)
        .arg("--mirror")
        .arg(&sc.dir)
        .stderr_to(&log)
        .timeout(Duration::from_secs(60))
        .spawn();
    if let Err(why) = wait_for_mirror(&sc.dir, &sc.home.creds_path(), &json!({}), SOON) {
        panic!("written at start: {why}\n{}", stop(d).context());
    }
    let moved = sc.home.path().join("mnt").join("claude.old");
    fs::rename(&sc.dir, &moved).unwrap();
    symlink(&elsewhere, &sc.dir).unwrap();
    let moved_before = FileState::of(&mirror_path(&moved));
    let logged_before = fs::read_to_string(&log).unwrap_or_default().len();
    // A change of the source: the mirror is due a write now.
    replace_atomically(&sc.home.creds_path(), &Login::fresh().doc());
    let dir_text = sc.dir.display().to_string();
    let logged = wait_until(SOON, || {
        fs::read_to_string(&log).is_ok_and(|l| l[logged_before.min(l.len())..].contains(&dir_text))
    });
    send_signal(&d, libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(1200));
    let written_there = list_names(&elsewhere);
    let moved_after = FileState::of(&mirror_path(&moved));
    // A real directory back: written again.
    fs::remove_file(&sc.dir).unwrap();
    fs::create_dir(&sc.dir).unwrap();
    send_signal(&d, libc::SIGHUP);
    let rewritten = wait_for_mirror(&sc.dir, &sc.home.creds_path(), &json!({}), SOON);
    let out = stop(d);
    let log_text = fs::read_to_string(&log).unwrap_or_default();
    out.check_eq(
        "nothing written through the link",
        written_there,
        Vec::<String>::new(),
    )
    .check_eq(
        "the old directory, moved away, is not written either",
        moved_after,
        moved_before,
    )
    .check(logged, format!("the refused write was logged:\n{log_text}"))
    .check(
        rewritten.is_ok(),
        format!("written again once a directory was back: {rewritten:?}"),
    );
}
