//! Which item: the service suffix (`CLAUDE_CONFIG_DIR`, `CLAUDE_SECURESTORAGE_CONFIG_DIR` wins,
//! set-but-empty means none) and the account (`$USER`, else `claude-code-user`). Each case puts
//! the login under the expected name and a decoy (whose refresh token the server refuses) under
//! the name a wrong rule would pick; the locks follow the same directory.

use std::time::Duration;

use claude_tokend_e2e::keychain::*;
use claude_tokend_e2e::*;
use serde_json::Value;

use super::*;

struct Case {
    config_dir: Option<String>,
    securestorage: Option<String>,
    /// The directory the locks and our flock live in (None: `HOME/.claude`).
    lock_dir: Option<PathBuf>,
}

/// Runs `--once` with the case's environment on a due item named by the contract's rule, with
/// a decoy under `decoy_service`. Returns the setup and the run.
fn run_case(case: &Case, decoy_service: &str) -> (Setup, TokenServer, Out, Value) {
    let mut s = Setup::empty();
    s.service = service_for(case.config_dir.as_deref(), case.securestorage.as_deref());
    assert_ne!(s.service, decoy_service, "the decoy must be another item");
    let login = Login::due();
    let doc = item_doc(&login);
    s.put(&doc);
    let decoy = item_doc(&Login::due());
    s.kc.put(decoy_service, &s.account, &decoy);
    let server = TokenServer::for_login(&login);
    let mut cmd = s.once(&server);
    if let Some(c) = &case.config_dir {
        cmd = cmd.env("CLAUDE_CONFIG_DIR", c);
    }
    if let Some(d) = &case.securestorage {
        cmd = cmd.env("CLAUDE_SECURESTORAGE_CONFIG_DIR", d);
    }
    let out = cmd.run();
    out.expect_code(0)
        .check_eq("requests", server.count(), 1)
        .check_eq(
            "the refresh token sent (the expected item's)",
            server.requests()[0].refresh_token(),
            Some(login.refresh.as_str()),
        )
        .check_eq(
            "the decoy item",
            s.kc.get(decoy_service, &s.account),
            Some(decoy),
        );
    check_refreshed(&out, &s, &server, &doc);
    expect_one_write_of_the_item(&out, &s, true);
    let lock_dir = case.lock_dir.clone().unwrap_or_else(|| s.home.claude_dir());
    out.check(
        lock_dir.join(".credentials.json.lock").is_file(),
        format!(
            "the flock file should be {}/.credentials.json.lock",
            lock_dir.display()
        ),
    );
    (s, server, out, doc)
}

#[test]
fn claude_config_dir_suffixes_the_service_with_its_hash() {
    let home_probe = TempHome::new();
    let cfg = home_probe.path().join("cfg");
    mkdir(&cfg);
    let cfg_s = cfg.to_str().unwrap().to_owned();
    let case = Case {
        config_dir: Some(cfg_s.clone()),
        securestorage: None,
        lock_dir: Some(cfg.clone()),
    };
    let (s, _, out, _) = run_case(&case, SERVICE);
    out.check(
        s.service.starts_with("Claude Code-credentials-") && s.service.len() == SERVICE.len() + 9,
        "a suffixed name",
    )
    .check(
        !s.home.claude_dir().join(".credentials.json.lock").exists(),
        "HOME/.claude was used for the locks although CLAUDE_CONFIG_DIR is set",
    );
}

#[test]
fn claude_config_dir_is_hashed_as_given_even_when_it_is_the_default() {
    // `HOME/.claude` spelled out in CLAUDE_CONFIG_DIR still gets a suffix; the decoy is the
    // unsuffixed item.
    let mut s = Setup::empty();
    let dir = s.home.claude_dir().to_str().unwrap().to_owned();
    s.service = service_for(Some(&dir), None);
    let login = Login::due();
    let doc = item_doc(&login);
    s.put(&doc);
    let decoy = item_doc(&Login::due());
    s.kc.put(SERVICE, &s.account, &decoy);
    let server = TokenServer::for_login(&login);
    let out = s.once(&server).env("CLAUDE_CONFIG_DIR", &dir).run();
    out.expect_code(0)
        .check_eq("requests", server.count(), 1)
        .check_eq(
            "the refresh token sent (the suffixed item's)",
            server.requests()[0].refresh_token(),
            Some(login.refresh.as_str()),
        )
        .check_eq(
            "the unsuffixed item",
            s.kc.get(SERVICE, &s.account),
            Some(decoy),
        );
    check_refreshed(&out, &s, &server, &doc);
}

#[test]
fn claude_securestorage_config_dir_wins_and_moves_the_locks() {
    let probe = TempHome::new();
    let cfg = probe.path().join("cfg");
    let secure = probe.path().join("secure");
    mkdir(&cfg);
    mkdir(&secure);
    // A live Claude Code lock in the secure-storage directory holds the run off first.
    let lock = LiveLock::hold(&secure.join(".oauth_refresh.lock"));
    let releaser = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(2500));
        lock.release();
    });
    let case = Case {
        config_dir: Some(cfg.to_str().unwrap().to_owned()),
        securestorage: Some(secure.to_str().unwrap().to_owned()),
        lock_dir: Some(secure.clone()),
    };
    let decoy = service_for(case.config_dir.as_deref(), None);
    let (_, _, out, _) = run_case(&case, &decoy);
    releaser.join().unwrap();
    out.check(
        out.elapsed >= Duration::from_millis(2000),
        format!(
            "the live {}/.oauth_refresh.lock did not hold the run off (done after {:?})",
            secure.display(),
            out.elapsed
        ),
    )
    .check(
        !cfg.join(".credentials.json.lock").exists(),
        "the locks went to CLAUDE_CONFIG_DIR instead of CLAUDE_SECURESTORAGE_CONFIG_DIR",
    )
    .check(
        !secure.join(".oauth_refresh.lock").exists(),
        "the lock directory is left",
    );
}

#[test]
fn an_empty_securestorage_dir_means_no_suffix_and_home_claude() {
    let probe = TempHome::new();
    let cfg = probe.path().join("cfg");
    mkdir(&cfg);
    // The decoy is CLAUDE_CONFIG_DIR's item: set-but-empty secure storage means neither.
    let decoy = service_for(Some(cfg.to_str().unwrap()), None);
    let mut s = Setup::empty();
    let login = Login::due();
    let doc = item_doc(&login);
    s.service = service_for(Some(cfg.to_str().unwrap()), Some(""));
    assert_eq!(s.service, SERVICE);
    s.put(&doc);
    let decoy_doc = item_doc(&Login::due());
    s.kc.put(&decoy, &s.account, &decoy_doc);
    let server = TokenServer::for_login(&login);
    let out = s
        .once(&server)
        .env("CLAUDE_CONFIG_DIR", &cfg)
        .env("CLAUDE_SECURESTORAGE_CONFIG_DIR", "")
        .run();
    out.expect_code(0)
        .check_eq("requests", server.count(), 1)
        .check_eq("the decoy", s.kc.get(&decoy, &s.account), Some(decoy_doc))
        .check(
            s.home.claude_dir().join(".credentials.json.lock").is_file(),
            "set-but-empty CLAUDE_SECURESTORAGE_CONFIG_DIR means HOME/.claude for the locks",
        );
    check_refreshed(&out, &s, &server, &doc);
}

#[test]
fn no_config_dir_means_the_plain_service_name() {
    let probe = TempHome::new();
    let (s, _, _, _) = run_case(
        &Case {
            config_dir: None,
            securestorage: None,
            lock_dir: None,
        },
        &service_for(Some(probe.path().to_str().unwrap()), None),
    );
    assert_eq!(s.service, SERVICE);
}

/// `status --json` on a fresh item under `account`, with `USER` as given.
fn status_with_user(user: Option<&str>, account: &str) {
    let mut s = Setup::empty();
    s.account = account.to_owned();
    let login = Login::fresh();
    s.put(&item_doc(&login));
    let server = TokenServer::start();
    let mut cmd = s.cmd(&server, &["status", "--json"]);
    cmd = match user {
        Some(u) => cmd.env("USER", u),
        None => cmd.env_remove("USER"),
    };
    let out = cmd.run();
    out.expect_code(0);
    let v: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("status --json is not JSON ({e})\n{}", out.context()));
    out.check_eq("store", v.get("store"), Some(&Value::from("keychain")))
        .check_eq("service", v.get("service"), Some(&Value::from(SERVICE)))
        .check_eq(
            format!("account with USER={user:?}"),
            v.get("account"),
            Some(&Value::from(account)),
        )
        .expect_masked(&login.access)
        .expect_masked(&login.refresh);
}

#[test]
fn the_account_is_user_when_it_is_a_plain_name() {
    status_with_user(Some("alice.b_c-1"), &account_for(Some("alice.b_c-1")));
    assert_eq!(account_for(Some("alice.b_c-1")), "alice.b_c-1");
}

#[test]
fn the_account_is_claude_code_user_when_user_is_unset_or_unusable() {
    for user in [None, Some("bad user!"), Some("émile")] {
        status_with_user(user, FALLBACK_ACCOUNT);
    }
}
