//! Presence and typing, as another browser sees them.

use std::time::Duration;

use crate::harness::{Chrome, Server, chromium, one_stored};

const VIEWERS: &str = "document.querySelector('#viewer-count').dataset.count";

/// bob arrives: alice's viewer count goes up and bob is listed. bob types:
/// alice sees "bob is typing". bob sends: the typing line clears (right away,
/// not by timing out) and the message is there. bob closes his tab: the count
/// goes down again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_and_typing_show_in_the_other_browser() {
    let Some(exe) = chromium() else { return };
    let server = Server::start();
    let (alice_browser, bob_browser) = tokio::join!(Chrome::launch(&exe), Chrome::launch(&exe));
    let alice = alice_browser.open_chat(&server, "alice").await;
    alice
        .wait_for("alice alone", &format!("{VIEWERS} === '1'"))
        .await;
    let bob_listed = "!!document.querySelector('#member-list li[data-nick=\"bob\"]')";
    assert!(
        !alice.eval::<bool>(bob_listed).await,
        "{}",
        alice.describe().await
    );

    let bob = bob_browser.open_chat(&server, "bob").await;
    alice
        .wait_for("the count to go up for bob", &format!("{VIEWERS} === '2'"))
        .await;
    alice.wait_for("bob in the member list", bob_listed).await;
    let summary: String = alice
        .eval("document.querySelector('#member-summary').textContent")
        .await;
    assert!(summary.contains("bob"), "summary {summary:?}");
    bob.wait_for("bob sees two", &format!("{VIEWERS} === '2'"))
        .await;

    // Typing shows, with bob's name.
    bob.type_into("#message-input", "hang on, writing").await;
    alice
        .wait_for(
            "bob typing",
            "document.querySelector('#typing-line').dataset.count === '1' && \
             document.querySelector('#typing-line').textContent.includes('bob')",
        )
        .await;
    // bob's own page does not show himself typing.
    let bob_self: String = bob
        .eval("document.querySelector('#typing-line').textContent")
        .await;
    assert_eq!(bob_self, "", "bob does not see himself typing");

    // Sending ends it. The page's own timeouts (3 s after bob's last keystroke,
    // 6 s expiry on alice's side) would clear it too, so it must clear sooner.
    bob.press_enter().await;
    alice
        .wait_for_within(
            "the typing line to clear after bob sent",
            "document.querySelector('#typing-line').dataset.count === '0' && \
             document.querySelector('#typing-line').textContent === ''",
            Duration::from_secs(2),
        )
        .await;
    alice
        .wait_for("bob's message", &one_stored("bob", "hang on, writing"))
        .await;

    // bob goes: the viewer count drops at once (his nick lingers for the grace period).
    bob.close().await;
    alice
        .wait_for("the count to go down", &format!("{VIEWERS} === '1'"))
        .await;
}
