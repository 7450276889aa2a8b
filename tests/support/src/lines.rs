//! A child's output read line by line on its own thread, so waiting for one
//! line is bounded and the child never blocks on a full pipe.

use std::io::{BufRead, BufReader, Read, Write};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::Duration;

/// Why no wanted line came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoLine {
    /// Nothing wanted arrived within the wait.
    Timeout,
    /// The output ended first (the process exited or closed it).
    Closed,
}

/// The wanted lines of one output.
pub struct Lines {
    rx: Receiver<String>,
}

impl Lines {
    /// Read `out` on a new thread until it ends. Every line is written to each
    /// of `copies`; the lines for which `want` is true are handed to
    /// [`Lines::next_within`]. The thread keeps reading after `self` is
    /// dropped.
    pub fn read(
        out: impl Read + Send + 'static,
        mut want: impl FnMut(&str) -> bool + Send + 'static,
        mut copies: Vec<Box<dyn Write + Send>>,
    ) -> Lines {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).split(b'\n') {
                let Ok(line) = line else { break };
                let line = String::from_utf8_lossy(&line);
                for copy in &mut copies {
                    let _ = writeln!(copy, "{line}");
                }
                if want(&line) {
                    // Nobody listening any more: keep draining all the same.
                    let _ = tx.send(line.into_owned());
                }
            }
        });
        Lines { rx }
    }

    /// The next wanted line, waiting at most `within`.
    pub fn next_within(&self, within: Duration) -> Result<String, NoLine> {
        self.rx.recv_timeout(within).map_err(|e| match e {
            RecvTimeoutError::Timeout => NoLine::Timeout,
            RecvTimeoutError::Disconnected => NoLine::Closed,
        })
    }
}
