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
    emit(&out)
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
