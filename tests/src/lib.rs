//! Harness for the black-box end-to-end suite: the built `claude-tokend` binary, run as a child
//! process in a throwaway HOME, against a real HTTP/1.1 token endpoint on 127.0.0.1.
//!
//! A few honest helpers, in modules by role, all re-exported here so tests just
//! `use claude_tokend_e2e::*`:
//! - `basics`: random names and the clock ([`random_alnum`], [`now_ms`]);
//! - `home`: [`TempHome`], a temporary HOME with a credentials file in it; [`Login`] and
//!   [`typical_doc`] build credentials with fake tokens; file writers and inspectors
//!   ([`write_creds_at`], [`read_json`], [`FileState`], ...);
//! - `server`: [`TokenServer`], a scripted, otherwise realistic (single-use, rotating) OAuth
//!   endpoint; its HTTP/1.1 wire format (`server/http.rs`) and its OAuth answers
//!   (`server/oauth.rs`) are kept apart;
//! - `runner`: [`bin`] finds the binary; [`Cmd`] runs it with a clean environment and a timeout;
//!   [`Out`] holds a run's exit code and output and asserts on it, printing both on failure;
//!   signals and liveness ([`stop`], [`send_signal`], [`is_running`], [`wait_until`]);
//! - `checks`: what a killed or finished run left behind ([`leftovers`], [`lock_dirs_present`],
//!   [`temp_files`]) and which token pair the file holds ([`which_pair`]);
//! - `claude_code`: playing Claude Code's part: its lock directories held live ([`LiveLock`]) or
//!   abandoned ([`abandoned_lock`]);
//! - `keychain`: the fake `security` and its database ([`keychain::FakeKeychain`]);
//! - `mirror`: access-only copies seen from outside: what a mirror must hold for a source
//!   ([`mirror_mismatch`], [`wait_for_mirror`]) and snapshots proving nothing was written
//!   outside a mirror directory ([`snapshot`]).
//!
//! Dependencies run one way: `basics` <- `home` <- `server` <- `checks`, and `runner` uses
//! `home` and `server`; the server never needs the runner.

mod basics;
mod checks;
mod claude_code;
mod home;
pub mod keychain;
mod mirror;
mod runner;
mod server;

pub use basics::*;
pub use checks::*;
pub use claude_code::*;
pub use home::*;
pub use mirror::*;
pub use runner::*;
pub use server::*;
