//! Drafts: what was typed and not sent comes back in a new tab.

use crate::harness::{Chrome, Server, chromium, js_str};

/// Text typed into the composer, tab closed straight away, a new tab opened
/// in the same browser profile (so the nick is remembered): the text is back
/// in the composer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draft_survives_closing_the_tab() {
    let Some(exe) = chromium() else { return };
    let server = Server::start();
    let chrome = Chrome::launch(&exe).await;
    let tab = chrome.open_chat(&server, "alice").await;

    let draft = "half a thought, not sent yet";
    tab.type_into("#message-input", draft).await;
    let typed: String = tab
        .eval("document.querySelector('#message-input').value")
        .await;
    assert_eq!(typed, draft);
    tab.close().await;

    let tab = chrome.new_tab().await;
    tab.goto(&server.url("/")).await;
    tab.wait_connected().await;
    let nick_dialog_open: bool = tab
        .eval("document.querySelector('#nick-dialog').open")
        .await;
    assert!(
        !nick_dialog_open,
        "the nick is remembered: {}",
        tab.describe().await
    );
    tab.wait_for(
        "the draft back in the composer",
        &format!(
            "document.querySelector('#message-input').value === {}",
            js_str(draft)
        ),
    )
    .await;
    assert_eq!(server.count_rows(draft), 0, "a draft is not a message");
}
