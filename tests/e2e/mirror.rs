//! Access-only copies ("mirrors", CONTRACT.md "Access-only copies for containers and other
//! machines"): `--mirror DIR` keeps `DIR/.credentials.json` as a copy of a login without its
//! refresh token, and `--mirror-cmd` publishes that copy elsewhere. One module per area:
//! - `follow`: the daemon's mirror follows the source (start, refreshes, outside writes,
//!   logout, a consumer's spoiling, the periodic check, a refused refresh);
//! - `oneshot`: `--once` and `refresh` bring mirrors up to date; a mirror that cannot be
//!   written is a warning; `token`, `status` and `logout` write none;
//! - `refusals`: what is refused at start (exit 2): a mirror that is a real login, a doubled
//!   mirror, an ambiguous pairing;
//! - `hostile`: what a consumer plants in its directory (links, a FIFO, a hard link, a huge or
//!   half-written file, a directory swapped for a link) never reaches outside it;
//! - `status`: `status` and `status --json` report each login's mirrors;
//! - `keychain`: a Keychain source mirrors to a file alike;
//! - `cmd`: `--mirror-cmd`, its environment, its stdin, its retries.

mod cmd;
mod follow;
mod hostile;
mod keychain;
mod oneshot;
mod refusals;
mod review;
mod status;
