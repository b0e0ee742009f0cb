//! Log setup: one `tracing` subscriber writing human-readable lines to stderr. It owns the
//! verbosity rules: `RUST_LOG` wins when set; otherwise `-v`/`-q` move from a default that is
//! `info` for the daemon and commands, and silence for `--once` (cron mails any output).

use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;

/// Verbosity steps, quietest first.
const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// The filter for a default level index (into `LEVELS`) moved by `-v`/`-q`.
pub fn level_for(default: usize, verbose: u8, quiet: u8) -> &'static str {
    let idx = (default + usize::from(verbose)).saturating_sub(usize::from(quiet));
    LEVELS[idx.min(LEVELS.len() - 1)]
}

/// Installs the subscriber. `quiet_by_default` is true for `--once`; `-v` there means "info".
pub fn init(quiet_by_default: bool, verbose: u8, quiet: u8, daemon: bool) {
    let default = if quiet_by_default {
        // `--once -v` should say what it did, so the first -v jumps straight to info.
        if verbose > 0 { 2 } else { 0 }
    } else {
        3
    };
    // journald stamps every line itself; a second timestamp is noise. Commands run by hand
    // need none either. A daemon writing to a plain log file (launchd) wants them.
    let stamped = daemon && std::env::var_os("JOURNAL_STREAM").is_none();
    macro_rules! install {
        ($builder:expr) => {{
            // A stderr that fails (a terminal that hung up, a closed pipe) must not make a
            // log line panic: tracing-subscriber would report it with `eprintln!`, whose panic
            // (an abort in release builds) could lose an answer in flight.
            let builder = $builder
                .with_writer(std::io::stderr)
                .with_ansi(false)
                .with_target(false)
                .log_internal_errors(false);
            if stamped {
                builder.init()
            } else {
                builder.without_time().init()
            }
        }};
    }
    match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => {
            install!(tracing_subscriber::fmt().with_env_filter(EnvFilter::new(v)))
        }
        // A plain level needs no directive parser: the common case never runs (or keeps
        // resident) filter machinery it does not use.
        _ => {
            let level = level_for(default, verbose, quiet)
                .parse::<LevelFilter>()
                .unwrap_or(LevelFilter::INFO);
            install!(tracing_subscriber::fmt().with_max_level(level))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_by_table() {
        let cases = [
            ((3, 0, 0), "info"),
            ((3, 1, 0), "debug"),
            ((3, 5, 0), "trace"),
            ((3, 0, 1), "warn"),
            ((3, 0, 2), "error"),
            ((3, 0, 9), "off"),
            ((0, 0, 0), "off"),
            ((2, 1, 0), "info"),
        ];
        for ((d, v, q), want) in cases {
            assert_eq!(level_for(d, v, q), want, "default={d} -v x{v} -q x{q}");
        }
    }
}
