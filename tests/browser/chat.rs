//! Chatting between two browsers, reloading, and text that looks like HTML.

use crate::harness::{Chrome, Server, chromium, msgs_with_text, one_stored};

/// alice and bob, each in their own browser, see each other's messages once,
/// under the right nick, and their own marked as theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_browsers_chat_both_ways() {
    let Some(exe) = chromium() else { return };
    let server = Server::start();
    let (alice_browser, bob_browser) = tokio::join!(Chrome::launch(&exe), Chrome::launch(&exe));
    let alice = alice_browser.open_chat(&server, "alice").await;
    let bob = bob_browser.open_chat(&server, "bob").await;

    let hi = "hi bob, it's alice";
    alice.send(hi).await;
    bob.wait_for("alice's message in bob's page", &one_stored("alice", hi))
        .await;
    alice
        .wait_for("alice's own message, stored", &one_stored("alice", hi))
        .await;

    let reply = "hello alice! bob here";
    bob.send(reply).await;
    alice
        .wait_for("bob's reply in alice's page", &one_stored("bob", reply))
        .await;
    bob.wait_for("bob's own reply, stored", &one_stored("bob", reply))
        .await;

    // Once each, in the same order with the same ids on both pages; own ones marked.
    for tab in [&alice, &bob] {
        assert_eq!(tab.count(hi).await, 1, "{}", tab.describe().await);
        assert_eq!(tab.count(reply).await, 1, "{}", tab.describe().await);
        tab.assert_ids_unique_ascending().await;
    }
    assert_eq!(
        alice.ids().await,
        bob.ids().await,
        "both pages show the same messages"
    );
    let own = |text: &str| format!("{}[0].classList.contains('own')", msgs_with_text(text));
    assert!(
        alice.eval::<bool>(&own(hi)).await,
        "alice's message is marked as hers"
    );
    assert!(
        !alice.eval::<bool>(&own(reply)).await,
        "bob's message is not alice's"
    );
    assert!(
        bob.eval::<bool>(&own(reply)).await,
        "bob's message is marked as his"
    );
    assert!(
        !bob.eval::<bool>(&own(hi)).await,
        "alice's message is not bob's"
    );
    assert_eq!(server.count_rows(hi), 1);
    assert_eq!(server.count_rows(reply), 1);
}

/// A reload shows the history again, each message once, with unique ids; a
/// message sent right before the reload (its ack maybe never seen) is stored
/// and shown once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_restores_history_without_duplicates() {
    let Some(exe) = chromium() else { return };
    let server = Server::start();
    let chrome = Chrome::launch(&exe).await;
    let alice = chrome.open_chat(&server, "alice").await;

    let texts = ["first of three", "second of three", "third of three"];
    for text in texts {
        alice.send(text).await;
    }
    server.post("general", "carol", "carol via the API").await;
    for text in texts {
        alice
            .wait_for("alice's message stored", &one_stored("alice", text))
            .await;
    }
    alice
        .wait_for("carol's message", &one_stored("carol", "carol via the API"))
        .await;
    let before = alice.ids().await;

    // Sent, then reloaded at once: whether or not the ack arrived, it must end up once.
    let last = "sent just before the reload";
    alice.send(last).await;
    alice.reload().await;
    alice.wait_connected().await;
    // The whole (short) history is loaded once the log says where it begins.
    alice
        .wait_for(
            "the history back, up to its beginning",
            "!!document.querySelector('#message-list .log-top .beginning')",
        )
        .await;
    for text in texts {
        alice
            .wait_for("history after reload", &one_stored("alice", text))
            .await;
    }
    alice
        .wait_for(
            "carol's message after reload",
            &one_stored("carol", "carol via the API"),
        )
        .await;
    alice
        .wait_for("the last send, once", &one_stored("alice", last))
        .await;

    let after = alice.ids().await;
    assert_eq!(
        &after[..before.len()],
        &before[..],
        "the same messages, same ids, same order"
    );
    assert_eq!(after.len(), before.len() + 1, "{}", alice.describe().await);
    alice.assert_ids_unique_ascending().await;
    assert_eq!(
        server.count_rows(last),
        1,
        "the send before the reload is stored once"
    );
    let queued: String = alice
        .eval("document.querySelector('#conn-status').dataset.queued")
        .await;
    assert_eq!(queued, "0", "nothing left in the outbox");

    // Live messages still arrive after the reload, once.
    server.post("general", "carol", "after the reload").await;
    alice
        .wait_for("a live message", &one_stored("carol", "after the reload"))
        .await;
    alice.assert_ids_unique_ascending().await;
}

/// Text that looks like HTML is shown as text, from the composer, from the
/// HTTP API (live), and from the history after a reload; nothing in it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn html_in_messages_is_shown_as_text() {
    let Some(exe) = chromium() else { return };
    let server = Server::start();
    let chrome = Chrome::launch(&exe).await;
    let alice = chrome.open_chat(&server, "alice").await;
    let probe = "window.__alerts = []; window.alert = (m) => window.__alerts.push(String(m)); true";
    let _: bool = alice.eval(probe).await;

    let evil = "<img src=x onerror=alert(1)><b>bold</b>";
    let evil_nick = "<i>mallory</i>";
    let evil2 = "<script>alert(2)</script><a href=javascript:alert(3)>x</a>";
    alice.send(evil).await;
    alice
        .wait_for("the message, stored", &one_stored("alice", evil))
        .await;
    server.post("general", evil_nick, evil2).await;
    alice
        .wait_for("mallory's message", &one_stored(evil_nick, evil2))
        .await;

    let no_markup = "document.querySelectorAll('#message-list img, #message-list b, \
                     #message-list i, #message-list script, #message-list a').length";
    let check = |when: &'static str| {
        let alice = &alice;
        async move {
            assert_eq!(
                alice.eval::<usize>(no_markup).await,
                0,
                "markup was parsed ({when})"
            );
            let nick: String = alice
                .eval(&format!(
                    "{}[0].querySelector('.nick').textContent",
                    msgs_with_text(evil2)
                ))
                .await;
            assert_eq!(nick, evil_nick, "the nick is shown as text ({when})");
            assert_eq!(alice.count(evil).await, 1, "{when}");
        }
    };
    check("live").await;
    let alerts: Vec<String> = alice.eval("window.__alerts").await;
    assert!(alerts.is_empty(), "script ran: {alerts:?}");

    // The same from the history after a reload (alert is watched from the first script on).
    alice
        .page
        .evaluate_on_new_document(
            "window.__alerts = []; window.alert = (m) => window.__alerts.push(String(m));",
        )
        .await
        .expect("init script");
    alice.reload().await;
    alice.wait_connected().await;
    alice
        .wait_for("the history", &one_stored(evil_nick, evil2))
        .await;
    alice
        .wait_for("the history", &one_stored("alice", evil))
        .await;
    check("history").await;
    let alerts: Vec<String> = alice.eval("window.__alerts").await;
    assert!(alerts.is_empty(), "script ran: {alerts:?}");
    let title: String = alice.eval("document.title").await;
    assert!(!title.contains('<'), "title {title:?}");
}

/// A message far longer than one WebSocket frame (the server sends anything
/// over 2 KiB as several) shows whole, once, in another browser.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_message_arrives_whole_in_another_browser() {
    let Some(exe) = chromium() else { return };
    let server = Server::start();
    let (alice_browser, bob_browser) = tokio::join!(Chrome::launch(&exe), Chrome::launch(&exe));
    let alice = alice_browser.open_chat(&server, "alice").await;
    let bob = bob_browser.open_chat(&server, "bob").await;

    // The default limit of 4,000 characters, three bytes each in UTF-8.
    let long = "€".repeat(3_999) + "!";
    alice.send(&long).await;

    bob.wait_for(
        "alice's long message in bob's page",
        &one_stored("alice", &long),
    )
    .await;
    assert_eq!(bob.count(&long).await, 1, "{}", bob.describe().await);
    assert_eq!(server.count_rows(&long), 1);
}
