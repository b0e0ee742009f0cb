//! Where the credentials file is: `--credentials`/`CLAUDE_TOKEND_CREDENTIALS`, then
//! `CLAUDE_CONFIG_DIR`, then `HOME/.claude`.

use std::path::PathBuf;

use claude_tokend_e2e::*;
use serde_json::json;

/// One HOME holding four due credentials files, one per way of naming it, and a server that
/// accepts all four logins: the refresh token sent tells which file the program chose.
struct Four {
    home: TempHome,
    server: TokenServer,
    files: Vec<(&'static str, PathBuf, Login)>,
}

impl Four {
    fn new() -> Four {
        let home = TempHome::new();
        let server = TokenServer::start();
        let files = [
            ("flag", home.path().join("by-flag").join("creds.json")),
            ("env", home.path().join("by-env").join("creds.json")),
            (
                "config dir",
                home.path().join("cfg").join(".credentials.json"),
            ),
            ("home", home.creds_path()),
        ]
        .into_iter()
        .map(|(name, path)| {
            let login = Login::due();
            write_creds_at(&path, &login.doc());
            server.accept_refresh(&login.refresh);
            (name, path, login)
        })
        .collect();
        Four {
            home,
            server,
            files,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.files
            .iter()
            .find(|(n, _, _)| *n == name)
            .map(|(_, p, _)| p.clone())
            .expect("known name")
    }

    /// Runs `--once` with the given sources set and checks that exactly `want` was refreshed.
    fn run(&self, flag: bool, env: bool, config_dir: bool, want: &str) {
        let before: Vec<FileState> = self
            .files
            .iter()
            .map(|(_, p, _)| FileState::of(p))
            .collect();
        let mut cmd = Cmd::new(&self.home).server(&self.server).arg("--once");
        if flag {
            cmd = cmd.arg("--credentials").arg(self.path("flag"));
        }
        if env {
            cmd = cmd.env("CLAUDE_TOKEND_CREDENTIALS", self.path("env"));
        }
        if config_dir {
            cmd = cmd.env("CLAUDE_CONFIG_DIR", self.home.path().join("cfg"));
        }
        let out = cmd.run();
        out.expect_code(0)
            .expect_silent()
            .check_eq("requests sent", self.server.count(), 1);
        let (_, path, login) = self
            .files
            .iter()
            .find(|(n, _, _)| *n == want)
            .expect("known name");
        out.check_eq(
            format!("refresh token sent (the {want} file's)"),
            self.server.requests()[0].refresh_token(),
            Some(login.refresh.as_str()),
        );
        out.check_eq(
            format!("accessToken in the {want} file"),
            oauth(&read_json(path)).get("accessToken"),
            Some(&json!(self.server.last_issued().access)),
        );
        for ((name, p, _), b) in self.files.iter().zip(&before) {
            if *name != want {
                out.expect_untouched(p, b);
            }
        }
    }
}

#[test]
fn credentials_flag_wins_over_everything() {
    Four::new().run(true, true, true, "flag");
}

#[test]
fn credentials_env_wins_over_config_dir_and_home() {
    Four::new().run(false, true, true, "env");
}

#[test]
fn config_dir_wins_over_home() {
    Four::new().run(false, false, true, "config dir");
}

#[test]
fn home_is_the_default() {
    Four::new().run(false, false, false, "home");
}

#[test]
fn config_dir_alone_creates_nothing_in_home() {
    let home = TempHome::new();
    let login = Login::due();
    let cfg = home.path().join("cfg");
    write_creds_at(&cfg.join(".credentials.json"), &login.doc());
    let server = TokenServer::for_login(&login);
    let out = Cmd::new(&home)
        .server(&server)
        .env("CLAUDE_CONFIG_DIR", &cfg)
        .arg("--once")
        .run();
    out.expect_code(0)
        .check_eq("requests sent", server.count(), 1)
        .check_eq(
            "HOME after the run",
            list_names(home.path()),
            vec!["cfg".to_owned()],
        )
        .expect_only_files(&cfg, &allowed_siblings(".credentials.json"));
}

#[test]
fn a_missing_explicit_file_exits_78_and_names_its_path() {
    let home = TempHome::new();
    // A login in the default place must not be used instead.
    let login = Login::due();
    home.write_creds(&login.doc());
    let server = TokenServer::for_login(&login);
    let missing = home.path().join("nowhere.json");
    for by_flag in [true, false] {
        let cmd = Cmd::new(&home).server(&server).arg("--once");
        let cmd = if by_flag {
            cmd.arg("--credentials").arg(&missing)
        } else {
            cmd.env("CLAUDE_TOKEND_CREDENTIALS", &missing)
        };
        let out = cmd.run();
        out.expect_code(78)
            .expect_stderr_contains(&missing.display().to_string())
            .check_eq("requests sent", server.count(), 0)
            .check(!missing.exists(), "the missing file was created");
    }
}

#[test]
fn status_reads_the_located_file() {
    let home = TempHome::new();
    let login = Login::fresh();
    let path = home.path().join("cfg").join(".credentials.json");
    write_creds_at(&path, &login.doc());
    let out = Cmd::new(&home)
        .env("CLAUDE_CONFIG_DIR", home.path().join("cfg"))
        .arg("status")
        .run();
    out.expect_code(0).check(
        out.stdout.contains(&path.display().to_string()),
        "status shows the path it read",
    );
}
