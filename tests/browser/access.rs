//! Access token: a private server makes the page ask for the token, once; a wrong one is asked again.

use crate::harness::{Chrome, Server, chromium};

const TOKEN_DIALOG_OPEN: &str = "!!document.querySelector('#token-dialog[open] #token-input')";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_asks_for_the_access_token_once_and_keeps_it() {
    let Some(exe) = chromium() else { return };
    let server = Server::start_with(&["--access-token", "s3cret"]);
    let chrome = Chrome::launch(&exe).await;
    let tab = chrome.new_tab().await;
    tab.goto(&server.url("/")).await;
    tab.choose_nick("alice").await;

    // A wrong token is refused by the server and the page asks again.
    tab.wait_for("the token dialog", TOKEN_DIALOG_OPEN).await;
    tab.type_into("#token-input", "wrong").await;
    tab.click("#token-submit").await;
    tab.wait_for(
        "the token dialog again after a wrong token",
        TOKEN_DIALOG_OPEN,
    )
    .await;
    let _: bool = tab
        .eval("(() => { document.querySelector('#token-input').value = ''; return true; })()")
        .await;
    tab.type_into("#token-input", "s3cret").await;
    tab.click("#token-submit").await;
    tab.wait_connected().await;

    // Kept: a reload connects without asking.
    tab.reload().await;
    tab.wait_connected().await;
    let asked_again: bool = tab.eval(TOKEN_DIALOG_OPEN).await;
    assert!(
        !asked_again,
        "the token was asked for again: {}",
        tab.describe().await
    );
    tab.send("in with the token").await;
    tab.wait_for(
        "the message stored",
        "[...document.querySelectorAll('#message-list li.msg[data-id]')].some(e => e.textContent.includes('in with the token'))",
    )
    .await;
    assert_eq!(server.count_rows("in with the token"), 1);
}
