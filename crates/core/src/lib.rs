//! The core of claude-tokend: everything about the refresh path that is not a process.
//!
//! This library has no runtime of its own, installs no signal handlers and never exits the
//! process; the `claude-tokend` binary is a thin adapter over it. Data flows one way:
//! a command asks [`refresh`] to bring the file up to date; `refresh` uses [`store`] (locate,
//! lock, read, atomic write), [`oauth`] (the token endpoint) and [`schedule`] (pure timing).

pub mod claude_locks;
pub mod credentials;
pub mod login;
pub mod mirror;
pub mod oauth;
pub mod profile;
pub mod refresh;
pub mod save;
pub mod schedule;
pub mod seams;
pub mod secret;
pub mod settings;
pub mod store;
