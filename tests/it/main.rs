//! natter's integration tests: one binary, a module per area, all against the real server process.

mod helpers;

mod cli;
mod example_db;
mod errors;
mod handshake;
mod history;
mod messages;
mod replay;
mod transport;
