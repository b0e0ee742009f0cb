//! `doctor [--json] [--offline]` (CONTRACT.md "`doctor`"): each check's ok and non-ok case,
//! through the built binary. No test asks the machine's real service manager: a fake
//! `systemctl` and `launchctl` (`support`) come first on PATH and answer as each test says.
//! One module per group of checks:
//! - `output`: the JSON and text formats, exit codes 0/1/2, and the promise that doctor
//!   changes no byte and no mtime under HOME, sends no token request and prints no token;
//! - `environment`: `shadowing` (CLAUDE_CODE_OAUTH_TOKEN, ANTHROPIC_API_KEY...) and
//!   `claude-code-store` (the login Claude Code reads against the service's; macOS's two copies);
//! - `store`: `store` and `login`;
//! - `ownership`: a directory or a FIFO at the credentials path, root and another user's login;
//! - `locks`: stale Claude Code lock directories;
//! - `service`: what systemd and launchd are asked and what doctor makes of the answers;
//! - `keeper`: the live daemons keeping a login (one, two, none once killed);
//! - `mirrors`: a mirror holding the source's current access token, or not;
//! - `clock`: the one `HEAD /` and its `Date` header;
//! - `hostile`: FIFOs where files belong, a service manager that holds its pipes open.

mod clock;
mod environment;
mod hostile;
mod keeper;
mod locks;
mod mirrors;
mod output;
mod ownership;
mod service;
mod store;
mod support;
