//! Black-box end-to-end tests of the `claude-tokend` binary: each test runs the built binary in
//! a throwaway HOME against a loopback token endpoint and checks what the outside contract
//! (CONTRACT.md) promises: exit codes, output, the requests sent, and the credentials file.
//!
//! One test binary (ripgrep style); the harness is the `claude-tokend-e2e` library.

mod access_only;
mod cli;
mod coexist;
mod crash;
mod daemon;
mod daemon_comeback;
mod daemon_first_run;
mod daemon_refused;
mod daemon_slow_store;
mod daemon_unsaved;
mod daemon_watch;
mod doctor;
mod failures;
mod keeper;
mod keychain;
mod locate;
mod login;
mod login_profile;
mod many;
mod mirror;
mod notify;
mod odd_values;
mod one_store;
mod papercuts;
mod refresh;
mod refused;
mod safety;
mod settings;
mod signals;
mod spent;
mod status;
mod suspects;
mod token;
mod token_outage;
mod waste;
mod waste_daemon;
