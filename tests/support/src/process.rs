//! Signals and bounded waits for child processes: the one way to stop a
//! process (a signal, a bounded wait, SIGKILL as the fallback), used for the
//! server and for anything else a test or the bench starts.

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use wait_timeout::ChildExt;

use crate::{Error, Result};

/// The signals the tests and the bench send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Term,
    Int,
    Kill,
    /// The process keeps its sockets but runs nothing.
    Stop,
    Cont,
}

impl Signal {
    /// `"TERM"` (or `"SIGTERM"`), `"INT"`, `"KILL"`, `"STOP"`, `"CONT"`.
    pub fn named(name: &str) -> Option<Signal> {
        Some(match name.strip_prefix("SIG").unwrap_or(name) {
            "TERM" => Signal::Term,
            "INT" => Signal::Int,
            "KILL" => Signal::Kill,
            "STOP" => Signal::Stop,
            "CONT" => Signal::Cont,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Signal::Term => "SIGTERM",
            Signal::Int => "SIGINT",
            Signal::Kill => "SIGKILL",
            Signal::Stop => "SIGSTOP",
            Signal::Cont => "SIGCONT",
        }
    }

    fn number(self) -> libc::c_int {
        match self {
            Signal::Term => libc::SIGTERM,
            Signal::Int => libc::SIGINT,
            Signal::Kill => libc::SIGKILL,
            Signal::Stop => libc::SIGSTOP,
            Signal::Cont => libc::SIGCONT,
        }
    }
}

/// Send `signal` to process `pid` (not waiting for anything).
pub fn send(pid: u32, signal: Signal) -> Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| Error::new(format!("pid {pid}")))?;
    // SAFETY: kill(2) only signals a process; it touches no memory of ours.
    if unsafe { libc::kill(pid, signal.number()) } == 0 {
        Ok(())
    } else {
        let e = std::io::Error::last_os_error();
        Err(Error::new(format!("{} to {pid}: {e}", signal.name())))
    }
}

/// How a process ended after [`stop`].
#[derive(Debug, Clone, Copy)]
pub struct Stopped {
    pub status: ExitStatus,
    /// From the signal to the exit.
    pub took: Duration,
}

/// Send `signal`, then wait up to `within` for the exit. A process still
/// running then is killed with SIGKILL, and that is an error.
pub fn stop(child: &mut Child, signal: Signal, within: Duration) -> Result<Stopped> {
    let started = Instant::now();
    send(child.id(), signal)?;
    match child.wait_timeout(within)? {
        Some(status) => Ok(Stopped {
            status,
            took: started.elapsed(),
        }),
        None => {
            kill(child)?;
            Err(Error::new(format!(
                "the process did not exit within {} s of {} and was killed",
                within.as_secs(),
                signal.name()
            )))
        }
    }
}

/// Wait up to `within` for `child` to exit on its own; after that it is
/// killed with SIGKILL, and that is an error.
pub fn wait_exit(child: &mut Child, within: Duration) -> Result<ExitStatus> {
    match child.wait_timeout(within)? {
        Some(status) => Ok(status),
        None => {
            kill(child)?;
            Err(Error::new(format!(
                "the process did not exit within {} s and was killed",
                within.as_secs()
            )))
        }
    }
}

/// SIGKILL and reap. SIGKILL cannot be caught, so the wait is short; it is
/// bounded all the same.
pub fn kill(child: &mut Child) -> Result<ExitStatus> {
    // An error here means it has already exited: reaping it is all that is left.
    let _ = child.kill();
    child
        .wait_timeout(crate::WAIT)?
        .ok_or_else(|| Error::new(format!("process {} survived SIGKILL", child.id())))
}

/// What a process run to its end printed.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Run `command` to its end (killed after `within`, an error), collecting
/// its stdout and stderr.
pub fn run_to_end(command: &mut Command, within: Duration) -> Result<Finished> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let collect = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_string(&mut text);
            }
            text
        })
    };
    let stdout = collect(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = collect(child.stderr.take().map(|p| Box::new(p) as _));
    let status = wait_exit(&mut child, within)?;
    // Exited (or killed): both pipes are at their end, so the joins return.
    let joined = |reader: std::thread::JoinHandle<String>| {
        reader
            .join()
            .map_err(|_| Error::new("an output reader panicked"))
    };
    Ok(Finished {
        status,
        stdout: joined(stdout)?,
        stderr: joined(stderr)?,
    })
}
