//! End-to-end tests of the chat page: the real `natter` binary, driven through
//! Debian's headless Chromium (`/usr/bin/chromium`, or `$NATTER_CHROMIUM`) over
//! the DevTools protocol with `chromiumoxide`. Each test starts its own server
//! on 127.0.0.1 with a fresh SQLite file and its own browser(s) with fresh
//! profiles; two users are two browser processes.
//!
//! Without a Chromium binary every test prints
//! `browser tests skipped: ... not found (apt-get install chromium)` and passes,
//! unless `NATTER_REQUIRE_BROWSER=1` (CI), which turns a missing browser into a
//! failure. Screenshots of the main states go to `screenshots/` (git-ignored).

mod harness;

mod access;
mod chat;
mod drafts;
mod presence;
mod reconnect;
mod rooms;
mod screenshots;
mod store_id;
