//! What the commands print on standard output, and what happens when it
//! cannot be written.
//!
//! A reader that leaves early (`ingress-xdp status | head -1`) closes the
//! pipe. Rust's `println!` panics on that, which in `attach` would stop the
//! loop between two attach points. So a command's report lines go through
//! [`line`]: a closed pipe ends the output, never the work, and the command
//! still exits 0. Any other write error (a full disk behind `>`) is kept and
//! reported once the work is done, so the exit status says the output is
//! incomplete. Streaming commands (`events`, `stats --watch`, `top`) write
//! with `?` instead, so a closed pipe ends them; `main` treats that error as
//! a normal end ([`is_closed_pipe`]).

use std::{
    fmt,
    io::{self, Write},
    sync::Mutex,
};

/// Once a write has failed, no more are tried; the first error is kept.
enum State {
    Open,
    Closed,
    Failed(io::Error),
}

static STATE: Mutex<State> = Mutex::new(State::Open);

/// Writes one line of a command's report to standard output.
pub fn line(args: fmt::Arguments<'_>) {
    text(format_args!("{args}\n"));
}

/// Writes text to standard output, as [`line`] does, without a newline.
pub fn text(args: fmt::Arguments<'_>) {
    let mut state = STATE.lock().unwrap_or_else(|e| e.into_inner());
    if !matches!(*state, State::Open) {
        return;
    }
    let mut out = io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.flush()) {
        *state = if e.kind() == io::ErrorKind::BrokenPipe {
            State::Closed
        } else {
            State::Failed(e)
        };
    }
}

/// The write error that cut a command's report short, other than a closed
/// pipe; taken, so it is reported once.
pub fn take_error() -> Option<io::Error> {
    let mut state = STATE.lock().unwrap_or_else(|e| e.into_inner());
    match std::mem::replace(&mut *state, State::Closed) {
        State::Failed(e) => Some(e),
        other => {
            *state = other;
            None
        }
    }
}

/// Whether a command ended because its reader closed standard output: the
/// way `events | head` and `stats --watch | head` are meant to end.
pub fn is_closed_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn a_closed_pipe_is_recognised_under_context() {
        let err = Err::<(), _>(io::Error::from(io::ErrorKind::BrokenPipe))
            .context("writing an event")
            .unwrap_err();
        assert!(is_closed_pipe(&err));
        let other = Err::<(), _>(io::Error::from(io::ErrorKind::StorageFull))
            .context("writing an event")
            .unwrap_err();
        assert!(!is_closed_pipe(&other));
        assert!(!is_closed_pipe(&anyhow::anyhow!("no such rule")));
    }
}
