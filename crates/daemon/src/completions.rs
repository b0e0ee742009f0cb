//! `claude-tokend completions <shell>` and `claude-tokend man`: shell completions (clap_complete)
//! and the man page (clap_mangen), both generated from the clap definition in `cli.rs`, so they
//! cannot drift from `--help`. Both print to stdout, for the user (or a package build) to save.

use std::path::Path;

use clap::CommandFactory;
use clap_complete::Shell;

use crate::cli::Cli;
use crate::{exit, show};

const BIN: &str = "claude-tokend";

pub fn completions(shell: Shell) -> u8 {
    let mut cmd = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, BIN, &mut out);
    let mut script = String::from_utf8_lossy(&out).into_owned();
    if shell == Shell::Bash {
        script = fix_bash_names(&script);
    }
    for flag in hidden_flags(&cmd) {
        script = without_flag(shell, &script, &flag);
    }
    emit(script.as_bytes())
}

/// clap_complete's bash script finds the subcommand typed so far by building a name in `cmd`
/// (`claude__tokend__subcmd__service`: the program name with `-` as `__`) and then switches on
/// it, but it spells the program name in the `case` labels with `-` as `__subcmd__`
/// (`claude__subcmd__tokend__subcmd__service`), so for a hyphenated program no label after the
/// top level ever matches and nothing is completed after a subcommand. The labels are made to
/// spell it as `cmd` does; a script without the mix-up passes through unchanged.
fn fix_bash_names(script: &str) -> String {
    script.replace(&BIN.replace('-', "__subcmd__"), &BIN.replace('-', "__"))
}

/// The long flags hidden from `--help` (`--manager`, which tests and packagers use), anywhere in
/// the command tree. The generators list hidden arguments like any other.
fn hidden_flags(cmd: &clap::Command) -> Vec<String> {
    let mut found: Vec<String> = cmd
        .get_arguments()
        .filter(|a| a.is_hide_set())
        .filter_map(|a| a.get_long().map(str::to_owned))
        .collect();
    for sub in cmd.get_subcommands() {
        for flag in hidden_flags(sub) {
            if !found.contains(&flag) {
                found.push(flag);
            }
        }
    }
    found
}

/// `script` without `--long` offered: bash lists flags as words of `opts="..."` lines and
/// completes a flag's value in a `--long)` case block; the other shells give each flag lines of
/// its own (fish spells it `-l long`).
fn without_flag(shell: Shell, script: &str, long: &str) -> String {
    let flag = format!("--{long}");
    let mut out = String::with_capacity(script.len());
    let mut in_case_block = false;
    for line in script.split_inclusive('\n') {
        let trimmed = line.trim();
        if shell == Shell::Bash {
            if in_case_block {
                in_case_block = trimmed != ";;";
                continue;
            }
            if trimmed == format!("{flag})") {
                in_case_block = true;
                continue;
            }
            if let Some(start) = line.find("opts=\"")
                && let Some(len) = line[start + 6..].find('"')
            {
                let words = &line[start + 6..start + 6 + len];
                let kept: Vec<&str> = words.split(' ').filter(|w| *w != flag).collect();
                out.push_str(&line[..start + 6]);
                out.push_str(&kept.join(" "));
                out.push_str(&line[start + 6 + len..]);
                continue;
            }
            out.push_str(line);
        } else {
            let spelled = if shell == Shell::Fish {
                format!(" -l {long}")
            } else {
                flag.clone()
            };
            if !mentions(line, &spelled) {
                out.push_str(line);
            }
        }
    }
    out
}

/// Whether `line` holds `token` as a whole word (not `--manager` in `--manager-x`).
fn mentions(line: &str, token: &str) -> bool {
    line.match_indices(token).any(|(at, _)| {
        !line[at + token.len()..]
            .starts_with(|c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    })
}

/// The roff source of `claude-tokend(1)` on stdout, or every page (one per command, as the
/// main page's SEE ALSO names them) written into `dir`.
pub fn man(dir: Option<&Path>) -> u8 {
    if let Some(dir) = dir {
        return match std::fs::create_dir_all(dir)
            .and_then(|()| clap_mangen::generate_to(Cli::command(), dir))
        {
            Ok(()) => {
                println!("Wrote the man pages into {}", dir.display());
                exit::OK
            }
            Err(e) => {
                eprintln!(
                    "claude-tokend: cannot write the man pages into {}: {e}",
                    dir.display()
                );
                exit::FAILURE
            }
        };
    }
    let mut out = Vec::new();
    if let Err(e) = clap_mangen::Man::new(Cli::command()).render(&mut out) {
        eprintln!("claude-tokend: cannot render the man page: {e}");
        return exit::FAILURE;
    }
    emit(&out)
}

/// Generated into memory first, then written: the generators panic on a write error, and
/// `claude-tokend man | head` closing the pipe early is no error at all.
fn emit(bytes: &[u8]) -> u8 {
    match show::emit(bytes) {
        Ok(()) => exit::OK,
        Err(code) => code,
    }
}
