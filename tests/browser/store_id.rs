//! Store identity (protocol version 2): the page remembers the welcome's
//! `storeId`, and when a welcome names another store (a restored backup, whose
//! ids may be lower than what the page has seen) it forgets its serverOffset
//! and the messages it showed, says hello again without an offset, and still
//! delivers its queued send exactly once.

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chromiumoxide::cdp::browser_protocol::network::EventWebSocketFrameSent;
use futures_util::StreamExt;
use serde_json::Value;

use crate::harness::{Chrome, Server, Tab, chromium, one_stored};

const STATE: &str = "document.querySelector('#conn-status').dataset.state";
const QUEUED: &str = "Number(document.querySelector('#conn-status').dataset.queued)";
const STORE_ID: &str = "localStorage.getItem('natter.storeId')";
const OFFSET: &str = "Number(localStorage.getItem('natter.serverOffset'))";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_backup_makes_the_page_start_fresh() {
    let Some(exe) = chromium() else { return };
    let mut server = Server::start();
    let chrome = Chrome::launch(&exe).await;
    let alice = chrome.open_chat(&server, "alice").await;
    // The welcome is handled before the page says connected.
    let first_store: Option<String> = alice.eval(STORE_ID).await;
    let first_store = first_store.expect("the page keeps welcome.storeId");

    // Arrange: a backup holding one message, then messages it does not have.
    server.post("general", "carol", "in the backup").await;
    alice
        .wait_for("the first message", &one_stored("carol", "in the backup"))
        .await;
    let backup = server.db().with_file_name("backup.db");
    backup_database(&server, &backup);
    for i in 1..=3 {
        server
            .post("general", "carol", &format!("not in the backup {i}"))
            .await;
    }
    alice
        .wait_for(
            "the last message",
            &one_stored("carol", "not in the backup 3"),
        )
        .await;
    let seen_offset: i64 = alice.eval(OFFSET).await;

    // Act: while alice is offline, the server is replaced by the backup,
    // alice queues a send, and carol writes to the restored store, at an id
    // alice's old offset has already passed.
    alice.set_offline(true).await;
    alice
        .wait_for("the page offline", &format!("{STATE} !== 'connected'"))
        .await;
    let queued = "queued across the restore";
    alice.send(queued).await;
    alice
        .wait_for("the send queued", &format!("{QUEUED} === 1"))
        .await;
    server.kill();
    restore_database(&server, &backup);
    server.restart_same_port();
    let restored = server.post("general", "carol", "after the restore").await;
    assert!(
        restored["id"].as_i64().expect("id") <= seen_offset,
        "the restored store must reuse ids the page has seen: {restored} vs {seen_offset}"
    );
    let hellos = record_hellos(&alice).await;
    alice.set_offline(false).await;

    // Assert: the page starts fresh on the restored store.
    alice
        .wait_for_within(
            "reconnected",
            &format!("{STATE} === 'connected'"),
            Duration::from_secs(15),
        )
        .await;
    alice
        .wait_for(
            "the restored store's new message",
            &one_stored("carol", "after the restore"),
        )
        .await;
    alice
        .wait_for("the queued send delivered", &one_stored("alice", queued))
        .await;
    alice
        .wait_for("the outbox empty", &format!("{QUEUED} === 0"))
        .await;
    let new_store: String = alice.eval(STORE_ID).await;
    assert_ne!(new_store, first_store, "the new storeId is kept");
    let last_hello = hellos.lock().expect("hellos").last().cloned();
    let last_hello = last_hello.expect("a hello after going online");
    assert!(
        last_hello.get("serverOffset").is_none(),
        "the hello that got the restored store's messages carries no serverOffset: {last_hello}"
    );
    assert_eq!(alice.count("in the backup").await, 1);
    for i in 1..=3 {
        let gone = format!("not in the backup {i}");
        assert_eq!(alice.count(&gone).await, 0, "{gone:?} is forgotten");
    }
    assert_eq!(
        server.count_rows(queued),
        1,
        "the queued send is stored once"
    );
    alice.assert_ids_unique_ascending().await;
}

/// `natter backup`, while the server runs: the copy gets a storeId of its own.
fn backup_database(server: &Server, dest: &std::path::Path) {
    let status = Command::new(env!("CARGO_BIN_EXE_natter"))
        .arg("backup")
        .arg("--db")
        .arg(server.db())
        .arg(dest)
        .status()
        .expect("run natter backup");
    assert!(status.success(), "natter backup failed: {status}");
}

/// Put the backup in place of the (stopped) server's database, as an operator
/// restoring it would: the old write-ahead log must not be replayed onto it.
fn restore_database(server: &Server, backup: &std::path::Path) {
    for suffix in ["-wal", "-shm"] {
        let mut side = server.db().as_os_str().to_owned();
        side.push(suffix);
        let _ = std::fs::remove_file(side);
    }
    std::fs::copy(backup, server.db()).expect("restore the backup");
}

/// Every `hello` the tab sends from now on, in order.
async fn record_hellos(tab: &Tab) -> Arc<Mutex<Vec<Value>>> {
    let hellos = Arc::new(Mutex::new(Vec::new()));
    let mut frames = tab
        .page
        .event_listener::<EventWebSocketFrameSent>()
        .await
        .expect("listen to WebSocket frames");
    let sink = hellos.clone();
    tokio::spawn(async move {
        while let Some(event) = frames.next().await {
            let Ok(frame) = serde_json::from_str::<Value>(&event.response.payload_data) else {
                continue;
            };
            if frame["type"] == "hello" {
                sink.lock().expect("hellos").push(frame);
            }
        }
    });
    hellos
}
