//! `claude-tokend`: the binary. A thin adapter over `tokend_core`: parse the command line, set up
//! logging, run one command, and map its result to an exit code. Nothing here knows how a token
//! is refreshed; it only knows what each outcome means to a user and to a script.

mod cli;
mod commands;
mod completions;
mod daemon;
mod doctor;
mod exit;
mod interrupt;
mod logging;
mod login;
mod logins;
mod mirror_cmd;
mod mirrors;
mod service;
mod show;
mod status;
mod token;

use std::process::ExitCode;

use clap::CommandFactory;

use cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = cli::parse();
    if cli.once && cli.command.is_some() {
        Cli::command()
            .error(
                clap::error::ErrorKind::ArgumentConflict,
                "--once cannot be combined with a command; use `claude-tokend --once` alone",
            )
            .exit();
    }
    let s = &cli.settings;
    let is_daemon = cli.command.is_none() && !cli.once;
    // `token` is as silent as `--once` when it succeeds: its stdout is read by a program.
    let silent = cli.once || matches!(cli.command, Some(Command::Token { .. }));
    logging::init(silent, s.verbose, s.quiet, is_daemon);
    if s.refresh_before < tokend_core::settings::CLAUDE_CODE_MARGIN {
        tracing::warn!(
            "{} {} is shorter than Claude Code's own 5-minute margin; \
             Claude Code may refresh first and race this program",
            s.origin("refresh_before").name(),
            tokend_core::settings::format_duration_exact(s.refresh_before)
        );
    }
    let code = match (&cli.command, cli.once) {
        (None, true) => commands::once(&cli.settings),
        (Some(Command::Refresh), _) => commands::refresh(&cli.settings),
        (Some(Command::Status { json }), _) => status::status(&cli.settings, *json),
        (Some(Command::Token { json }), _) => token::token(&cli.settings, *json),
        (Some(Command::Doctor { json, offline }), _) => {
            doctor::doctor(&cli.settings, *json, *offline)
        }
        (Some(Command::Login(args)), _) => login::login(&cli.settings, args),
        (Some(Command::Logout { yes }), _) => login::logout(&cli.settings, *yes),
        (Some(Command::Service { action }), _) => service::run(&cli.settings, action),
        (Some(Command::Completions { shell }), _) => completions::completions(*shell),
        (Some(Command::Man { dir }), _) => completions::man(dir.as_deref()),
        (None, false) => commands::daemon(&cli.settings),
    };
    ExitCode::from(code)
}
