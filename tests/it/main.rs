//! natter's integration tests: one binary, a module per area, all against the real server process.

mod helpers;

mod messages;
mod transport;
