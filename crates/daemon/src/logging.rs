//! Log setup: one `tracing` subscriber writing human-readable lines to stderr. It owns the
//! verbosity rules: `RUST_LOG` wins when set; otherwise `-v`/`-q` move from a default that is
//! `info` for the daemon and commands, and silence for `--once` (cron mails any output); and
//! how a line looks (see [`Lines`]).

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

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
    let lines = Lines {
        daemon,
        stamped: daemon && std::env::var_os("JOURNAL_STREAM").is_none(),
    };
    macro_rules! install {
        ($builder:expr) => {{
            // A stderr that fails (a terminal that hung up, a closed pipe) must not make a
            // log line panic: tracing-subscriber would report it with `eprintln!`, whose panic
            // (an abort in release builds) could lose an answer in flight.
            $builder
                .with_writer(std::io::stderr)
                .with_ansi(false)
                .log_internal_errors(false)
                .event_format(lines)
                .init()
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

/// How a log line looks. A command's lines read like its other messages, `claude-tokend:
/// warning: …` (a person reads them among the command's own output); the daemon's read like a
/// log, `WARN …` after an optional timestamp. Neither begins with a space (tracing's default
/// pads the level to five columns), and each event's span (`login{store=…}`, with several
/// logins) comes before its message.
#[derive(Clone, Copy)]
struct Lines {
    daemon: bool,
    stamped: bool,
}

impl<S, N> FormatEvent<S, N> for Lines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut w: format::Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let level = *event.metadata().level();
        if self.daemon {
            if self.stamped {
                SystemTime.format_time(&mut w)?;
                w.write_char(' ')?;
            }
            write!(w, "{level} ")?;
        } else {
            write!(w, "claude-tokend: {}", command_label(level))?;
        }
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                w.write_str(span.name())?;
                if let Some(fields) = span.extensions().get::<FormattedFields<N>>()
                    && !fields.is_empty()
                {
                    write!(w, "{{{fields}}}")?;
                }
                w.write_str(": ")?;
            }
        }
        ctx.field_format().format_fields(w.by_ref(), event)?;
        writeln!(w)
    }
}

/// What a command's line says before its message, as `eprintln!` messages do: nothing for
/// information, `warning: ` and `error: ` for the rest.
fn command_label(level: Level) -> &'static str {
    match level {
        Level::ERROR => "error: ",
        Level::WARN => "warning: ",
        Level::INFO => "",
        Level::DEBUG => "debug: ",
        Level::TRACE => "trace: ",
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

    #[test]
    fn command_lines_are_labelled_as_messages_are() {
        assert_eq!(command_label(Level::WARN), "warning: ");
        assert_eq!(command_label(Level::ERROR), "error: ");
        assert_eq!(command_label(Level::INFO), "");
    }
}
