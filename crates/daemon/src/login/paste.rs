//! Reading the code the sign-in page shows, pasted by the user: asked again after an answer
//! without one, never read past 64 KiB, and refused when it carries another attempt's state.

use std::io::{BufRead, IsTerminal, Write};

use tokend_core::login::{PasteError, check_state, parse_paste};
use tokend_core::secret::Secret;

use crate::exit;

/// The longest paste read: a code with its state, or a whole callback URL, is a few hundred
/// bytes; anything longer is not one, and is not read on (`login < /dev/zero`).
const PASTE_LIMIT: usize = 64 * 1024;
/// Answers without a code (an Enter pressed too early, a stray line) before `login` gives up:
/// enough for a person, few enough that an endless stream of empty lines ends it.
const PASTE_TRIES: usize = 5;

/// Reads the code the sign-in page shows, asking again after an answer without one (an empty
/// line, say), until end of input or [`PASTE_TRIES`] answers. A paste that carries another
/// login attempt's state is refused at once: nothing is sent for it.
pub(super) fn read_paste(state: &str) -> Result<Secret, u8> {
    let stdin = std::io::stdin();
    let typed = stdin.is_terminal();
    let mut input = stdin.lock();
    eprint!(
        "After signing in, the page shows a code. Paste it here (CODE#STATE) and press Enter: "
    );
    for attempt in 1..=PASTE_TRIES {
        let _ = std::io::stderr().flush();
        let line = match read_line_limited(&mut input, PASTE_LIMIT) {
            Ok(Line::Text(line)) => line,
            Ok(Line::End) => {
                eprintln!(
                    "\nclaude-tokend: no code was pasted before the end of input; nothing was \
                     sent. Run `claude-tokend login` again and paste the code the page shows"
                );
                return Err(exit::FAILURE);
            }
            Ok(Line::TooLong) => {
                eprintln!(
                    "\nclaude-tokend: the pasted text is longer than 64 KiB, which no code is; \
                     nothing was sent. Run `claude-tokend login` again and paste the code the \
                     page shows"
                );
                return Err(exit::FAILURE);
            }
            Err(e) => {
                eprintln!("\nclaude-tokend: cannot read the code from standard input: {e}");
                return Err(exit::FAILURE);
            }
        };
        // An answer that was not typed leaves the prompt's line open: end it, so what follows
        // (an error, the result) starts a line of its own.
        if !typed {
            eprintln!();
        }
        match parse_paste(&line) {
            Ok(pasted) => {
                if let Err(e) = check_state(&pasted, state) {
                    eprintln!("claude-tokend: {e}");
                    return Err(exit::FAILURE);
                }
                return Ok(pasted.code);
            }
            Err(e @ (PasteError::Empty | PasteError::NoCode)) if attempt < PASTE_TRIES => {
                let why = match e {
                    PasteError::Empty => "Nothing was pasted",
                    _ => "That has no authorization code",
                };
                eprint!(
                    "{why}. Paste the code the page shows (CODE#STATE) and press Enter, or end \
                     the input (Ctrl-D) to give up: "
                );
            }
            Err(PasteError::Empty | PasteError::NoCode) => {
                eprintln!(
                    "claude-tokend: no code after {PASTE_TRIES} answers; nothing was sent. Run \
                     `claude-tokend login` again and paste the code the page shows"
                );
                return Err(exit::FAILURE);
            }
            Err(e) => {
                eprintln!("claude-tokend: {e}");
                return Err(exit::FAILURE);
            }
        }
    }
    unreachable!("the last try returns")
}

/// One line of input, read no further than `limit` bytes.
enum Line {
    Text(String),
    /// End of input before any byte.
    End,
    /// More than `limit` bytes without a newline.
    TooLong,
}

fn read_line_limited(input: &mut impl BufRead, limit: usize) -> std::io::Result<Line> {
    let mut bytes = Vec::new();
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    let n = std::io::Read::take(&mut *input, cap).read_until(b'\n', &mut bytes)?;
    Ok(if n == 0 {
        Line::End
    } else if bytes.len() > limit && bytes.last() != Some(&b'\n') {
        Line::TooLong
    } else {
        Line::Text(String::from_utf8_lossy(&bytes).into_owned())
    })
}
