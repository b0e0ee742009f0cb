//! How `security` reads its input, as SecurityTool does: getopt(3) for a command's options,
//! and, under `-i`, its readline() and split_line() for the lines on stdin.

use std::io::{self, BufRead};

/// `security`'s interactive line buffer (MAX_LINE_LEN): at most 4095 bytes and a NUL.
const MAX_LINE_LEN: usize = 4096;
/// `security`'s word limit per interactive line (MAX_ARGS).
const MAX_ARGS: usize = 32;

/// SecurityTool's readline(): bytes up to a newline (dropped), at most MAX_LINE_LEN - 1 of them
/// (the rest of a longer line stays unread for the next call); EOF before a newline, even after
/// some bytes, ends the input (None).
pub fn read_line(input: &mut impl BufRead) -> Option<Vec<u8>> {
    let mut line = Vec::new();
    loop {
        if line.len() == MAX_LINE_LEN - 1 {
            return Some(line);
        }
        let mut byte = [0u8; 1];
        match input.read(&mut byte) {
            Ok(0) => return None,
            Ok(_) if byte[0] == b'\n' => return Some(line),
            Ok(_) => line.push(byte[0]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
}

/// SecurityTool's split_line(): words separated by C `isspace`; a word that starts with `"` or
/// `'` runs to the same quote (or the end of the line); a backslash takes the next character
/// literally, inside quotes and out; a quote inside a bare word is an ordinary character; at
/// most MAX_ARGS words (the rest of the line is ignored). A NUL ends the line, as in C.
pub fn split_line(line: &[u8]) -> Vec<String> {
    #[derive(PartialEq)]
    enum State {
        SkipWs,
        Arg,
        ArgEscaped,
        Quoted,
        QuotedEscaped,
    }
    let line = line.split(|&b| b == 0).next().unwrap_or_default();
    let is_space = |b: u8| matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r');
    let mut words: Vec<Vec<u8>> = Vec::new();
    let mut cur = Vec::new();
    let mut state = State::SkipWs;
    let mut quote = 0u8;
    for &c in line {
        match state {
            State::SkipWs => {
                if is_space(c) {
                    continue;
                }
                if c == b'"' || c == b'\'' {
                    quote = c;
                    state = State::Quoted;
                } else if c == b'\\' {
                    state = State::ArgEscaped;
                } else {
                    cur.push(c);
                    state = State::Arg;
                }
            }
            State::Arg => {
                if c == b'\\' {
                    state = State::ArgEscaped;
                } else if is_space(c) {
                    words.push(std::mem::take(&mut cur));
                    state = State::SkipWs;
                    if words.len() >= MAX_ARGS {
                        break;
                    }
                } else {
                    cur.push(c);
                }
            }
            State::Quoted => {
                if c == b'\\' {
                    state = State::QuotedEscaped;
                } else if c == quote {
                    words.push(std::mem::take(&mut cur));
                    state = State::SkipWs;
                    if words.len() >= MAX_ARGS {
                        break;
                    }
                } else {
                    cur.push(c);
                }
            }
            State::ArgEscaped => {
                cur.push(c);
                state = State::Arg;
            }
            State::QuotedEscaped => {
                cur.push(c);
                state = State::Quoted;
            }
        }
    }
    if state != State::SkipWs {
        words.push(cur);
    }
    words
        .into_iter()
        .map(|w| String::from_utf8_lossy(&w).into_owned())
        .collect()
}

/// getopt(3) as BSD has it: options until the first non-option or `--`; `x:` takes a value (the
/// rest of the word, or the next word).
pub struct Parsed {
    pub opts: Vec<(char, Option<String>)>,
    pub next: usize,
}

pub fn getopt(args: &[String], spec: &str) -> Result<Parsed, String> {
    let takes = |c: char| -> Option<bool> {
        let i = spec.find(c)?;
        Some(spec[i + c.len_utf8()..].starts_with(':'))
    };
    let mut opts = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        if a == "--" {
            i += 1;
            break;
        }
        if !a.starts_with('-') || a == "-" {
            break;
        }
        let chars: Vec<char> = a[1..].chars().collect();
        let mut j = 0;
        while j < chars.len() {
            let c = chars[j];
            match takes(c) {
                None => return Err(format!("illegal option -- {c}")),
                Some(false) => opts.push((c, None)),
                Some(true) => {
                    let rest: String = chars[j + 1..].iter().collect();
                    let value = if !rest.is_empty() {
                        rest
                    } else {
                        i += 1;
                        args.get(i)
                            .cloned()
                            .ok_or_else(|| format!("option requires an argument -- {c}"))?
                    };
                    opts.push((c, Some(value)));
                    break;
                }
            }
            j += 1;
        }
        i += 1;
    }
    Ok(Parsed { opts, next: i })
}
