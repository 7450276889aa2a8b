//! natter's integration tests: one binary, a module per area, all against the real server process.

mod helpers;

mod api;
mod backup;
mod cli;
mod drafts;
mod errors;
mod example_db;
mod faults;
mod fuzz_regressions;
mod handshake;
mod history;
mod limits;
mod messages;
mod metrics;
mod ordering;
mod presence;
mod properties;
mod replay;
mod soak;
mod store_id;
mod transport;
