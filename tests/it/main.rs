//! natter's integration tests: one binary, a module per area, all against the real server process.

mod helpers;

mod cli;
mod example_db;
mod faults;
mod errors;
mod handshake;
mod history;
mod limits;
mod messages;
mod replay;
mod transport;
