//! Losing the server or the network: queued sends, reconnecting, catching up.

use std::time::Duration;

use crate::harness::{Chrome, Server, Tab, chromium, msgs_with_text, one_stored};

const STATE: &str = "document.querySelector('#conn-status').dataset.state";
const QUEUED: &str = "Number(document.querySelector('#conn-status').dataset.queued)";

/// The page shows `text` as one own message waiting to go out, and says so in the status.
async fn assert_queued(tab: &Tab, text: &str) {
    tab.wait_for(
        "the send shown as queued",
        &format!(
            "{QUEUED} >= 1 && {STATE} !== 'connected' && (() => {{ const m = {}; \
             return m.length === 1 && m[0].classList.contains('pending') && !m[0].dataset.id; }})()",
            msgs_with_text(text)
        ),
    )
    .await;
}

/// The server is SIGKILLed mid-conversation and restarted on the same port
/// and database. Meanwhile the page says it is reconnecting and queues what is
/// sent; afterwards it is connected, shows every message another client sent
/// right after the restart exactly once, and delivers its queued send once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_killed_and_restarted_on_the_same_port() {
    let Some(exe) = chromium() else { return };
    let mut server = Server::start();
    let chrome = Chrome::launch(&exe).await;
    let alice = chrome.open_chat(&server, "alice").await;

    alice.send("before the crash").await;
    server
        .post("general", "carol", "carol before the crash")
        .await;
    alice
        .wait_for("alice's message", &one_stored("alice", "before the crash"))
        .await;
    alice
        .wait_for(
            "carol's message",
            &one_stored("carol", "carol before the crash"),
        )
        .await;

    server.kill();
    alice
        .wait_for("the page to notice", &format!("{STATE} === 'reconnecting'"))
        .await;
    let queued = "typed while the server was down";
    alice.send(queued).await;
    assert_queued(&alice, queued).await;
    assert_eq!(server.count_rows(queued), 0);

    server.restart_same_port();
    // Another client speaks right away, most likely before the page is back.
    let during: Vec<String> = (1..=3)
        .map(|i| format!("carol after the restart {i}"))
        .collect();
    for text in &during {
        server.post("general", "carol", text).await;
    }

    // The page's backoff may have grown to several seconds while the server was away.
    alice
        .wait_for_within(
            "the page to reconnect",
            &format!("{STATE} === 'connected'"),
            Duration::from_secs(25),
        )
        .await;
    for text in &during {
        alice
            .wait_for(
                "carol's message from the outage",
                &one_stored("carol", text),
            )
            .await;
    }
    alice
        .wait_for("the queued send delivered", &one_stored("alice", queued))
        .await;
    alice
        .wait_for("the outbox empty", &format!("{QUEUED} === 0"))
        .await;

    assert_eq!(
        server.count_rows(queued),
        1,
        "the queued send is stored once"
    );
    for text in ["before the crash", "carol before the crash"] {
        assert_eq!(alice.count(text).await, 1, "{text:?} shown once");
        assert_eq!(server.count_rows(text), 1);
    }
    for text in &during {
        assert_eq!(alice.count(text).await, 1, "{text:?} shown once");
    }
    alice.assert_ids_unique_ascending().await;

    // And the conversation goes on.
    alice.send("back to normal").await;
    alice
        .wait_for("a live send", &one_stored("alice", "back to normal"))
        .await;
}

/// The tab goes offline (DevTools network emulation): the page says so and
/// queues a send; back online, it reconnects and delivers it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_tab_queues_and_delivers_once_back_online() {
    let Some(exe) = chromium() else { return };
    let server = Server::start();
    let chrome = Chrome::launch(&exe).await;
    let alice = chrome.open_chat(&server, "alice").await;
    alice.send("online at first").await;
    alice
        .wait_for("first message", &one_stored("alice", "online at first"))
        .await;

    alice.set_offline(true).await;
    alice
        .wait_for(
            "the page to see it is offline",
            &format!("{STATE} !== 'connected'"),
        )
        .await;
    let text = "written on the train";
    alice.send(text).await;
    assert_queued(&alice, text).await;
    // Held back, not just slow: still queued a moment later, and not stored.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_queued(&alice, text).await;
    assert_eq!(
        server.count_rows(text),
        0,
        "nothing gets through while offline"
    );
    server
        .post("general", "carol", "carol while alice was offline")
        .await;

    alice.set_offline(false).await;
    alice
        .wait_for_within(
            "reconnected",
            &format!("{STATE} === 'connected'"),
            Duration::from_secs(15),
        )
        .await;
    alice
        .wait_for("the queued send delivered", &one_stored("alice", text))
        .await;
    alice
        .wait_for(
            "what was missed",
            &one_stored("carol", "carol while alice was offline"),
        )
        .await;
    alice
        .wait_for("the outbox empty", &format!("{QUEUED} === 0"))
        .await;
    assert_eq!(server.count_rows(text), 1, "stored once");
    assert_eq!(alice.count(text).await, 1);
    assert_eq!(alice.count("online at first").await, 1);
    alice.assert_ids_unique_ascending().await;
}

/// A send the server never saw, and one it never answered, are neither lost
/// nor doubled when the tab is closed: the next tab (same browser profile)
/// sends them again, and each is stored and shown exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsent_messages_survive_closing_the_tab() {
    let Some(exe) = chromium() else { return };
    let mut server = Server::start();
    let chrome = Chrome::launch(&exe).await;
    let tab = chrome.open_chat(&server, "alice").await;

    // 1. The server is gone: the send waits in the page's outbox.
    server.kill();
    tab.wait_for("the page to notice", &format!("{STATE} === 'reconnecting'"))
        .await;
    let never_seen = "queued, then the tab was closed";
    tab.send(never_seen).await;
    assert_queued(&tab, never_seen).await;
    tab.close().await;
    server.restart_same_port();
    let tab = chrome.new_tab().await;
    tab.goto(&server.url("/")).await;
    tab.wait_connected().await;
    tab.wait_for(
        "the queued send delivered by the next tab",
        &one_stored("alice", never_seen),
    )
    .await;
    tab.wait_for("the outbox empty", &format!("{QUEUED} === 0"))
        .await;
    assert_eq!(server.count_rows(never_seen), 1);

    // 2. The server hangs (SIGSTOP) while the send is on the wire, and the tab
    // goes before any answer. Whether the server stores that copy when it
    // resumes or not, the next tab's resend must leave exactly one.
    server.freeze();
    let unanswered = "sent, never acknowledged, tab closed";
    tab.send(unanswered).await;
    tab.wait_for(
        "the send on the wire, waiting for its ack",
        &format!(
            "(() => {{ const m = {}; return m.length === 1 && m[0].classList.contains('pending') && \
             m[0].querySelector('.msg-status').textContent === 'sending…'; }})()",
            msgs_with_text(unanswered)
        ),
    )
    .await;
    tab.close().await;
    server.thaw();
    let tab = chrome.new_tab().await;
    tab.goto(&server.url("/")).await;
    tab.wait_connected().await;
    tab.wait_for(
        "the unanswered send, once",
        &one_stored("alice", unanswered),
    )
    .await;
    tab.wait_for("the outbox empty", &format!("{QUEUED} === 0"))
        .await;
    assert_eq!(
        server.count_rows(unanswered),
        1,
        "stored once, however often it was sent"
    );
    assert_eq!(tab.count(never_seen).await, 1);
    tab.assert_ids_unique_ascending().await;
}
