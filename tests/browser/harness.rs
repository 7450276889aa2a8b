//! Harness: the real `natter` binary on 127.0.0.1 with its own SQLite file
//! (`natter-test-support`), and Debian's headless Chromium driven over the
//! DevTools protocol (chromiumoxide).
//!
//! Every wait is bounded (`WAIT`, or an explicit timeout) and polls the page,
//! so a broken page fails a test with a dump of what the page showed instead
//! of hanging it. Every server and browser started here is killed on drop,
//! also when a test panics. `TEST_LOG=1` streams the server's log and prints
//! the browser's.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chromiumoxide::cdp::browser_protocol::emulation::{
    MediaFeature, SetDeviceMetricsOverrideParams, SetEmulatedMediaParams,
};
use chromiumoxide::cdp::browser_protocol::input::{
    DispatchKeyEventParams, DispatchKeyEventType, InsertTextParams,
};
#[allow(deprecated)] // still served by Chromium; see `set_offline`
use chromiumoxide::cdp::browser_protocol::network::EmulateNetworkConditionsParams;
use chromiumoxide::cdp::browser_protocol::page::{CaptureScreenshotFormat, ReloadParams};
use chromiumoxide::page::ScreenshotParams;
use chromiumoxide::{Browser, Page};
use futures_util::StreamExt;
use natter_test_support::lines::Lines;
use natter_test_support::{Launch, Signal, logs_wanted};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

pub use natter_test_support::WAIT;

const BIN: &str = env!("CARGO_BIN_EXE_natter");
const DEFAULT_CHROMIUM: &str = "/usr/bin/chromium";

/// Chromium's command line, besides `--user-data-dir` and `--remote-debugging-port`.
const CHROMIUM_ARGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
];

// ---------------------------------------------------------------------------
// Finding the browser (or skipping)
// ---------------------------------------------------------------------------

/// The Chromium to use: `$NATTER_CHROMIUM`, else `/usr/bin/chromium`.
///
/// When it is missing this prints one line to stderr and returns `None`, so
/// the test returns early, unless `NATTER_REQUIRE_BROWSER=1` (CI), where a
/// missing browser fails the test.
pub fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("NATTER_CHROMIUM")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CHROMIUM));
    if path.is_file() {
        return Some(path);
    }
    if std::env::var("NATTER_REQUIRE_BROWSER").is_ok_and(|v| v == "1") {
        panic!(
            "{} not found and NATTER_REQUIRE_BROWSER=1 (apt-get install chromium)",
            path.display()
        );
    }
    // Straight to stderr, not eprintln!: the test harness would hide that for a passing test.
    let _ = writeln!(
        std::io::stderr(),
        "browser tests skipped: {} not found (apt-get install chromium)",
        path.display()
    );
    None
}

/// A JavaScript string literal for `s`.
pub fn js_str(s: &str) -> String {
    serde_json::to_string(s).expect("string")
}

// ---------------------------------------------------------------------------
// The server
// ---------------------------------------------------------------------------

/// A running `natter` with its own temp dir and database (the shared
/// `natter-test-support` server), plus what the page tests do to it.
pub struct Server {
    inner: natter_test_support::Server,
}

impl Server {
    /// The server's SQLite file.
    pub fn db(&self) -> &std::path::Path {
        &self.inner.db
    }

    pub fn start() -> Server {
        Self::start_with(&[])
    }

    /// Start with extra command-line options (for example an access token).
    pub fn start_with(args: &[&str]) -> Server {
        let inner = Launch::new(BIN)
            .args(args.iter().copied())
            .log_filter("natter=debug,warn")
            .start()
            .expect("start natter");
        Server { inner }
    }

    /// `http://127.0.0.1:PORT/` plus `path`.
    pub fn url(&self, path: &str) -> String {
        self.inner.http(path)
    }

    /// SIGKILL: no clean shutdown, no close frames.
    pub fn kill(&mut self) {
        self.inner.kill().expect("kill natter");
    }

    /// SIGSTOP: the process keeps its sockets but reads and answers nothing.
    pub fn freeze(&self) {
        self.inner.send_signal(Signal::Stop).expect("SIGSTOP");
    }

    /// SIGCONT after `freeze`.
    pub fn thaw(&self) {
        self.inner.send_signal(Signal::Cont).expect("SIGCONT");
    }

    /// Start the binary again on the same address and database.
    pub fn restart_same_port(&mut self) {
        self.inner.restart_same_port().expect("restart natter");
    }

    /// Post a message through the HTTP API, as any bot would; returns `{"id","ts"}`.
    pub async fn post(&self, room: &str, nick: &str, text: &str) -> Value {
        let response = reqwest::Client::new()
            .post(self.url(&format!("/api/rooms/{room}/messages")))
            .json(&json!({"nick": nick, "text": text}))
            .timeout(WAIT)
            .send()
            .await
            .expect("POST message");
        let status = response.status();
        let body: Value = response.json().await.expect("JSON answer");
        assert_eq!(status.as_u16(), 201, "post failed: {body}");
        body
    }

    /// Rows in the database with exactly this text.
    pub fn count_rows(&self, text: &str) -> i64 {
        let conn = rusqlite::Connection::open(&self.inner.db).expect("open db");
        conn.query_row(
            "SELECT count(*) FROM messages WHERE text = ?1",
            [text],
            |r| r.get(0),
        )
        .expect("count")
    }
}

// ---------------------------------------------------------------------------
// The browser
// ---------------------------------------------------------------------------

/// One Chromium process with a fresh profile: one user. Killed (with every
/// process it started) on drop.
pub struct Chrome {
    pub browser: Browser,
    child: Child,
    handler: tokio::task::JoinHandle<()>,
    dir: tempfile::TempDir,
}

impl Chrome {
    pub async fn launch(exe: &Path) -> Chrome {
        let dir = tempfile::tempdir().expect("temp dir");
        let profile = dir.path().join("profile");
        let log_path = dir.path().join("chromium.log");
        let log = std::fs::File::create(&log_path).expect("log file");
        let mut child = Command::new(exe)
            .args(CHROMIUM_ARGS)
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("--remote-debugging-port=0")
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            // Its own process group, so drop can kill the renderers and helpers too.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", exe.display()));
        let stderr = child.stderr.take().expect("stderr");
        let devtools = |l: &str| l.starts_with("DevTools listening on ");
        let lines = Lines::read(stderr, devtools, vec![Box::new(log)]);
        let Ok(line) = lines.next_within(Duration::from_secs(30)) else {
            kill_group(&mut child);
            panic!(
                "Chromium did not start:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        };
        let ws_url = line["DevTools listening on ".len()..].trim().to_string();
        let (browser, mut handler) = match Browser::connect(ws_url).await {
            Ok(pair) => pair,
            Err(e) => {
                kill_group(&mut child);
                panic!("connect to Chromium: {e}");
            }
        };
        let handler = tokio::spawn(async move {
            while let Some(event) = handler.next().await {
                if let Err(e) = event
                    && logs_wanted()
                {
                    eprintln!("chromiumoxide handler: {e}");
                }
            }
        });
        Chrome {
            browser,
            child,
            handler,
            dir,
        }
    }

    /// A new tab (same profile: same localStorage, same nick).
    pub async fn new_tab(&self) -> Tab {
        let page = tokio::time::timeout(WAIT, self.browser.new_page("about:blank"))
            .await
            .expect("new tab timed out")
            .expect("new tab");
        Tab { page }
    }

    /// A new tab at the chat page, with `nick` chosen in the nick dialog, connected.
    pub async fn open_chat(&self, server: &Server, nick: &str) -> Tab {
        let tab = self.new_tab().await;
        tab.goto(&server.url("/")).await;
        tab.choose_nick(nick).await;
        tab.wait_connected().await;
        tab
    }
}

impl Drop for Chrome {
    fn drop(&mut self) {
        self.handler.abort();
        kill_group(&mut self.child);
        if logs_wanted() {
            let log = std::fs::read_to_string(self.dir.path().join("chromium.log"));
            eprintln!("---- chromium log ----\n{}", log.unwrap_or_default());
        }
    }
}

fn kill_group(child: &mut Child) {
    // SAFETY: kill(2) with a negative pid signals the process group this
    // child leads (it was spawned with process_group(0)); no memory is touched.
    unsafe {
        libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL);
    }
    let _ = child.kill();
    let _ = child.wait();
}

// ---------------------------------------------------------------------------
// A tab: evaluating, waiting, typing
// ---------------------------------------------------------------------------

/// What the page shows, as JSON: printed when a wait times out.
const PAGE_STATE_JS: &str = r#"(() => {
  const q = (s) => document.querySelector(s);
  const status = q('#conn-status');
  return JSON.stringify({
    url: location.href,
    online: navigator.onLine,
    conn: status && status.dataset.state,
    queued: status && status.dataset.queued,
    statusText: status && status.textContent.trim(),
    room: (q('#room-title') || {}).textContent,
    input: (q('#message-input') || {}).value,
    viewers: (q('#viewer-count') || { dataset: {} }).dataset.count,
    typing: (q('#typing-line') || {}).textContent,
    nickDialogOpen: !!(q('#nick-dialog') || {}).open,
    rooms: [...document.querySelectorAll('#room-list .room-btn')].map((b) =>
      `${b.dataset.room}${b.getAttribute('aria-current') === 'true' ? '*' : ''}` +
      ` badge=${b.querySelector('.badge').hidden ? '-' : b.querySelector('.badge').textContent}`),
    messages: [...document.querySelectorAll('#message-list li.msg')].map((li) =>
      `${li.dataset.id || '?'} ${li.dataset.nick} [${li.className}] ` +
      JSON.stringify((li.querySelector('.msg-text') || {}).textContent) +
      (li.querySelector('.msg-status') ? ` (${li.querySelector('.msg-status').textContent})` : '')),
  }, null, 1);
})()"#;

/// JS for: the `li.msg` elements in the visible room's log whose text is `text`.
pub fn msgs_with_text(text: &str) -> String {
    format!(
        "[...document.querySelectorAll('#message-list li.msg')]\
         .filter((li) => li.querySelector('.msg-text').textContent === {})",
        js_str(text)
    )
}

/// JS for: exactly one message with `text` by `nick`, stored (has an id) and
/// neither pending nor failed, is shown in the visible room.
pub fn one_stored(nick: &str, text: &str) -> String {
    format!(
        "(() => {{ const m = {}; return m.length === 1 && m[0].dataset.nick === {} && \
         /^[0-9]+$/.test(m[0].dataset.id || '') && \
         !m[0].classList.contains('pending') && !m[0].classList.contains('failed'); }})()",
        msgs_with_text(text),
        js_str(nick)
    )
}

pub struct Tab {
    pub page: Page,
}

impl Tab {
    /// Evaluate a JS expression and deserialize its value.
    pub async fn eval<T: DeserializeOwned>(&self, js: &str) -> T {
        match self.try_eval(js).await {
            Ok(value) => serde_json::from_value(value.clone())
                .unwrap_or_else(|e| panic!("`{js}` gave {value}: {e}")),
            Err(e) => panic!("`{js}` failed: {e}\npage: {}", self.describe().await),
        }
    }

    async fn try_eval(&self, js: &str) -> Result<Value, String> {
        let result = tokio::time::timeout(WAIT, self.page.evaluate_expression(js))
            .await
            .map_err(|_| "evaluation timed out".to_string())?
            .map_err(|e| e.to_string())?;
        Ok(result.value().cloned().unwrap_or(Value::Null))
    }

    /// What the page shows, for failure messages.
    pub async fn describe(&self) -> String {
        match self.try_eval(PAGE_STATE_JS).await {
            Ok(Value::String(s)) => s,
            Ok(other) => other.to_string(),
            Err(e) => format!("(could not read the page: {e})"),
        }
    }

    /// Poll `js` until it is `true`, for at most `WAIT`.
    pub async fn wait_for(&self, what: &str, js: &str) {
        self.wait_for_within(what, js, WAIT).await;
    }

    /// Poll `js` until it is `true`; panics with the page's state after `within`.
    /// Returns how long it took.
    pub async fn wait_for_within(&self, what: &str, js: &str, within: Duration) -> Duration {
        let start = Instant::now();
        loop {
            let last = match self.try_eval(js).await {
                Ok(Value::Bool(true)) => return start.elapsed(),
                Ok(v) => v,
                Err(e) => Value::String(e), // mid-navigation, say: keep polling
            };
            if start.elapsed() >= within {
                panic!(
                    "timed out after {within:?} waiting for {what}\n  condition: {js}\n  \
                     last result: {last}\n  page: {}",
                    self.describe().await
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn goto(&self, url: &str) {
        tokio::time::timeout(WAIT, self.page.goto(url))
            .await
            .expect("navigation timed out")
            .expect("navigate");
    }

    pub async fn reload(&self) {
        // A marker the new document does not have: tells the old one from the new.
        let _: bool = self.eval("window.__natterBeforeReload = true").await;
        tokio::time::timeout(WAIT, self.page.execute(ReloadParams::default()))
            .await
            .expect("reload timed out")
            .expect("reload");
        // The old document may still answer for a moment: wait for a fresh one.
        self.wait_for(
            "the reloaded page",
            "document.readyState === 'complete' && !window.__natterBeforeReload",
        )
        .await;
    }

    /// Close the tab as a user would (unload handlers run).
    pub async fn close(self) {
        tokio::time::timeout(WAIT, self.page.close())
            .await
            .expect("close timed out")
            .expect("close tab");
    }

    /// Type a nick into the first-visit dialog and submit it.
    pub async fn choose_nick(&self, nick: &str) {
        self.wait_for(
            "the nick dialog",
            "!!document.querySelector('#nick-dialog[open] #nick-input')",
        )
        .await;
        self.type_into("#nick-input", nick).await;
        self.click("#nick-submit").await;
        self.wait_for(
            "the nick dialog to close",
            "!document.querySelector('#nick-dialog').open",
        )
        .await;
    }

    pub async fn wait_connected(&self) {
        self.wait_for(
            "#conn-status to say connected",
            "document.querySelector('#conn-status')?.dataset.state === 'connected'",
        )
        .await;
    }

    /// A real mouse click in the middle of the element.
    pub async fn click(&self, selector: &str) {
        let element = tokio::time::timeout(WAIT, self.page.find_element(selector))
            .await
            .expect("find element timed out")
            .unwrap_or_else(|e| panic!("no {selector}: {e}"));
        tokio::time::timeout(WAIT, element.click())
            .await
            .expect("click timed out")
            .unwrap_or_else(|e| panic!("click {selector}: {e}"));
    }

    /// Focus `selector` and type `text` into it (one `input` event, as an IME would).
    pub async fn type_into(&self, selector: &str, text: &str) {
        let focused: bool = self
            .eval(&format!(
                "(() => {{ const e = document.querySelector({}); if (!e) return false; \
                 e.focus(); return document.activeElement === e; }})()",
                js_str(selector)
            ))
            .await;
        assert!(focused, "could not focus {selector}");
        tokio::time::timeout(WAIT, self.page.execute(InsertTextParams::new(text)))
            .await
            .expect("typing timed out")
            .expect("insert text");
    }

    /// Press and release Enter in the focused element.
    pub async fn press_enter(&self) {
        for kind in [DispatchKeyEventType::KeyDown, DispatchKeyEventType::KeyUp] {
            let mut key = DispatchKeyEventParams::builder()
                .r#type(kind.clone())
                .key("Enter")
                .code("Enter")
                .windows_virtual_key_code(13)
                .native_virtual_key_code(13);
            if kind == DispatchKeyEventType::KeyDown {
                key = key.text("\r");
            }
            tokio::time::timeout(WAIT, self.page.execute(key.build().expect("key event")))
                .await
                .expect("key press timed out")
                .expect("key press");
        }
    }

    /// Type `text` into the composer and press Enter.
    pub async fn send(&self, text: &str) {
        self.type_into("#message-input", text).await;
        self.press_enter().await;
    }

    /// How many messages in the visible room have exactly this text.
    pub async fn count(&self, text: &str) -> usize {
        self.eval(&format!("{}.length", msgs_with_text(text))).await
    }

    /// `data-id`s of the visible room's messages, in page order (`None`: not stored yet).
    pub async fn ids(&self) -> Vec<Option<i64>> {
        let ids: Vec<Option<String>> = self
            .eval(
                "[...document.querySelectorAll('#message-list li.msg')]\
                 .map((li) => li.dataset.id || null)",
            )
            .await;
        ids.into_iter()
            .map(|id| id.map(|s| s.parse().expect("numeric data-id")))
            .collect()
    }

    /// Every shown message is stored, and the ids are unique and ascending.
    pub async fn assert_ids_unique_ascending(&self) {
        let ids = self.ids().await;
        let stored: Vec<i64> = ids.iter().flatten().copied().collect();
        assert_eq!(stored.len(), ids.len(), "unstored messages: {ids:?}");
        assert!(
            stored.windows(2).all(|w| w[0] < w[1]),
            "ids not unique and ascending: {stored:?}\npage: {}",
            self.describe().await
        );
    }

    /// Network emulation: `true` cuts the tab off as a dropped Wi-Fi would:
    /// `navigator.onLine` goes false and the `offline` event fires, and an open
    /// WebSocket neither closes nor carries frames (they wait in the socket).
    ///
    /// `Network.emulateNetworkConditions` is deprecated in favour of
    /// `emulateNetworkConditionsByRule` plus `overrideNetworkState`, but it
    /// does both in one call and Chromium still serves it.
    #[allow(deprecated)]
    pub async fn set_offline(&self, offline: bool) {
        let params = EmulateNetworkConditionsParams::builder()
            .offline(offline)
            .latency(0)
            .download_throughput(-1)
            .upload_throughput(-1)
            .build()
            .expect("network conditions");
        tokio::time::timeout(WAIT, self.page.execute(params))
            .await
            .expect("network emulation timed out")
            .expect("network emulation");
    }

    /// Emulate a screen of `width`×`height` CSS pixels and a colour scheme.
    pub async fn emulate(&self, width: i64, height: i64, mobile: bool, dark: bool) {
        let metrics = SetDeviceMetricsOverrideParams::builder()
            .width(width)
            .height(height)
            .device_scale_factor(if mobile { 2.0 } else { 1.0 })
            .mobile(mobile)
            .build()
            .expect("metrics");
        self.page.execute(metrics).await.expect("device metrics");
        let media = SetEmulatedMediaParams::builder()
            .feature(MediaFeature::new(
                "prefers-color-scheme",
                if dark { "dark" } else { "light" },
            ))
            .build();
        self.page.execute(media).await.expect("emulated media");
    }

    /// Move the mouse to the top-left corner, where it hovers over nothing.
    pub async fn park_mouse(&self) {
        self.page
            .move_mouse(chromiumoxide::layout::Point::new(1.0, 1.0))
            .await
            .expect("move mouse");
    }

    /// A PNG of the viewport, written to `path`.
    pub async fn screenshot(&self, path: &Path) {
        let params = ScreenshotParams::builder()
            .format(CaptureScreenshotFormat::Png)
            .build();
        let png = tokio::time::timeout(WAIT, self.page.screenshot(params))
            .await
            .expect("screenshot timed out")
            .expect("screenshot");
        std::fs::write(path, png).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }
}
