//! The contract's exit codes (CONTRACT.md "Commands and exit codes"): what each outcome means
//! to a script. Every module that ends a command names its code from here.

pub const OK: u8 = 0;
/// Status: the token has expired; other failures not listed below.
pub const FAILURE: u8 = 1;
/// Bad command line or setting (clap uses 2 as well).
pub const USAGE: u8 = 2;
/// Temporary failure after the retry budget: try again later (sysexits EX_TEMPFAIL).
pub const TEMPFAIL: u8 = 75;
/// A new login is needed (sysexits EX_NOPERM).
pub const LOGIN_NEEDED: u8 = 77;
/// The credentials file is missing, unreadable or malformed (sysexits EX_CONFIG).
pub const CONFIG: u8 = 78;
