//! The Keeper's decisions by table: when writes and `--mirror-cmd` runs start.
use super::*;
use std::path::PathBuf;

fn login(token: &str) -> Want {
    let mut m = serde_json::Map::new();
    m.insert("accessToken".into(), token.into());
    Want::Login(m)
}

fn keeper(mirrors: usize, command: bool) -> Keeper {
    let list = (0..mirrors)
        .map(|i| Mirror::new(PathBuf::from(format!("/m{i}"))))
        .collect();
    let command = command.then(|| crate::mirror_cmd::MirrorCmd {
        command: "true".to_owned(),
        named: "--mirror-cmd".to_owned(),
    });
    Keeper::new(vec![list], command)
}

/// The jobs due now, as (slot or command, the token they carry, replace_unparsable).
fn due(k: &mut Keeper, now: Instant) -> Vec<(JobKind, Option<String>, bool)> {
    k.due_jobs(now, |_| "login".to_owned())
        .into_iter()
        .map(|(_, job)| {
            let kind = job.kind();
            let (want, replace) = match job {
                Job::Sync {
                    want,
                    replace_unparsable,
                    ..
                } => (want, replace_unparsable),
                Job::Command { want, .. } => (want, false),
            };
            let token = match want {
                Want::Login(m) => m["accessToken"].as_str().map(str::to_owned),
                Want::NoLogin => None,
            };
            (kind, token, replace)
        })
        .collect()
}

fn synced(k: &mut Keeper, slot: usize, want: &Want, result: Result<Synced, MirrorError>) {
    let done = Done::Sync {
        slot,
        want: want.clone(),
        result,
    };
    k.finished(0, done, "login");
}

fn failure() -> Result<Synced, MirrorError> {
    Err(MirrorError {
        dir: PathBuf::from("/m0"),
        stage: "writing",
        source: std::io::Error::other("read-only"),
    })
}

#[test]
fn nothing_is_written_before_the_source_is_read_and_each_change_once() {
    let mut k = keeper(2, false);
    let now = Instant::now();
    assert!(due(&mut k, now).is_empty(), "no read yet: nothing to hold");
    k.want(0, login("a"));
    let jobs = due(&mut k, now);
    assert_eq!(
        jobs,
        [
            (JobKind::Sync(0), Some("a".into()), false),
            (JobKind::Sync(1), Some("a".into()), false)
        ]
    );
    assert!(due(&mut k, now).is_empty(), "busy slots start nothing more");
    synced(
        &mut k,
        0,
        &login("a"),
        Ok(Synced::Written { replaced: None }),
    );
    synced(&mut k, 1, &login("a"), Ok(Synced::Unchanged));
    assert!(due(&mut k, now).is_empty(), "up to date");
    k.want(0, login("a"));
    assert!(
        due(&mut k, now).is_empty(),
        "the same want again is no change"
    );
    k.want(0, Want::NoLogin);
    assert_eq!(due(&mut k, now).len(), 2, "a logout reaches every mirror");
}

#[test]
fn the_check_and_sighup_compare_again_and_a_failure_backs_off_until_the_source_changes() {
    let mut k = keeper(1, false);
    let now = Instant::now();
    k.want(0, login("a"));
    due(&mut k, now);
    synced(&mut k, 0, &login("a"), Ok(Synced::Unchanged));
    k.check_all();
    assert_eq!(due(&mut k, now).len(), 1, "the check looks again");
    synced(&mut k, 0, &login("a"), failure());
    assert!(due(&mut k, Instant::now()).is_empty(), "backing off");
    let wake = k.next_wake().expect("a retry time");
    assert!(wake > now && wake <= Instant::now() + Duration::from_secs(2));
    assert_eq!(due(&mut k, wake).len(), 1, "retried when the pause is over");
    synced(&mut k, 0, &login("a"), failure());
    k.want(0, login("b"));
    assert_eq!(
        due(&mut k, Instant::now()),
        [(JobKind::Sync(0), Some("b".into()), false)],
        "a new token is tried at once, backoff or not"
    );
}

#[test]
fn an_unparsable_file_gets_a_second_look_a_second_later_that_may_replace_it() {
    let mut k = keeper(1, false);
    let now = Instant::now();
    k.want(0, login("a"));
    due(&mut k, now);
    synced(&mut k, 0, &login("a"), Ok(Synced::Unparsable));
    assert!(due(&mut k, Instant::now()).is_empty());
    let later = Instant::now() + UNPARSABLE_PAUSE;
    assert_eq!(
        due(&mut k, later),
        [(JobKind::Sync(0), Some("a".into()), true)]
    );
    synced(
        &mut k,
        0,
        &login("a"),
        Ok(Synced::Written {
            replaced: Some("x"),
        }),
    );
    k.check_all();
    assert_eq!(
        due(&mut k, later),
        [(JobKind::Sync(0), Some("a".into()), false)],
        "the next look is a first look again"
    );
}

#[test]
fn the_command_runs_once_per_document_one_at_a_time_with_the_newest() {
    let mut k = keeper(0, true);
    let now = Instant::now();
    k.want(0, login("a"));
    assert_eq!(
        due(&mut k, now),
        [(JobKind::Command, Some("a".into()), false)]
    );
    k.want(0, login("b"));
    k.want(0, login("c"));
    assert!(due(&mut k, now).is_empty(), "one run at a time");
    let done = Done::Command {
        want: login("a"),
        result: Ok(()),
    };
    k.finished(0, done, "login");
    assert_eq!(
        due(&mut k, now),
        [(JobKind::Command, Some("c".into()), false)],
        "then one more, with the newest document"
    );
    let done = Done::Command {
        want: login("c"),
        result: Err("exit 1".into()),
    };
    k.finished(0, done, "login");
    assert!(
        due(&mut k, Instant::now()).is_empty(),
        "a failure backs off"
    );
    let wake = k.next_wake().expect("a retry time");
    assert_eq!(
        due(&mut k, wake),
        [(JobKind::Command, Some("c".into()), false)]
    );
    let done = Done::Command {
        want: login("c"),
        result: Ok(()),
    };
    k.finished(0, done, "login");
    k.check_all();
    assert!(
        due(&mut k, now).is_empty(),
        "the check never re-runs the command"
    );
    k.want(0, Want::NoLogin);
    assert_eq!(due(&mut k, now), [(JobKind::Command, None, false)]);
}

#[test]
fn a_consumers_login_is_looked_at_again_only_at_the_check_or_a_change_and_a_race_soon() {
    let mut k = keeper(1, false);
    let now = Instant::now();
    k.want(0, login("a"));
    due(&mut k, now);
    synced(&mut k, 0, &login("a"), Ok(Synced::HoldsRefreshToken));
    assert!(
        due(&mut k, now).is_empty(),
        "skipped: no look at once (that spun)"
    );
    assert_eq!(k.next_wake(), None, "and no wake-up for it");
    k.check_all();
    assert_eq!(due(&mut k, now).len(), 1, "the check looks again");
    synced(&mut k, 0, &login("a"), Ok(Synced::HoldsRefreshToken));
    k.want(0, login("b"));
    assert_eq!(due(&mut k, now).len(), 1, "so does a change of the source");
    synced(&mut k, 0, &login("b"), Ok(Synced::Raced));
    assert!(due(&mut k, Instant::now()).is_empty());
    assert_eq!(
        due(&mut k, Instant::now() + UNPARSABLE_PAUSE),
        [(JobKind::Sync(0), Some("b".into()), false)],
        "a race is looked at again a second later"
    );
}

#[test]
fn the_minute_check_rides_the_loops_own_wake_up() {
    let mut k = keeper(1, false);
    k.want(0, login("a"));
    let now = Instant::now();
    due(&mut k, now);
    synced(&mut k, 0, &login("a"), Ok(Synced::Unchanged));
    assert_eq!(k.next_wake(), None, "no wake-up of its own");
    k.on_timer(now + Duration::from_secs(30));
    assert!(due(&mut k, now).is_empty(), "not due half a minute in");
    k.on_timer(now + Duration::from_secs(57));
    assert_eq!(
        due(&mut k, now).len(),
        1,
        "a wake-up near the minute does it"
    );
}

#[test]
fn with_nothing_to_keep_the_loop_is_never_woken() {
    let mut k = keeper(0, false);
    k.want(0, login("a"));
    k.on_timer(Instant::now() + Duration::from_secs(3600));
    assert_eq!(k.next_wake(), None);
    assert!(due(&mut k, Instant::now()).is_empty());
}
