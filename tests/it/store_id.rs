//! Version 2 "Store identity": `welcome.storeId` is made with the store, kept across restarts, and new in every copy `natter backup` writes, so a client can tell that a restored backup voids its offset.

use serde_json::{Value, json};

use crate::helpers::{Server, ids, run_binary};

async fn welcome(server: &Server) -> Value {
    let (_client, frames) = server.joined("alice", &["general"]).await;
    frames[0].clone()
}

fn store_id(welcome: &Value) -> String {
    welcome["storeId"]
        .as_str()
        .unwrap_or_else(|| panic!("welcome without storeId: {welcome}"))
        .to_string()
}

/// `natter backup` of the server's database into its temp dir, as `name`.
fn backup(server: &Server, name: &str) -> std::path::PathBuf {
    let dest = server.dir.path().join(name);
    let (status, _, stderr) = run_binary(
        &[
            "backup",
            "--db",
            server.db.to_str().unwrap(),
            dest.to_str().unwrap(),
        ],
        server.dir.path(),
    );
    assert!(status.success(), "{stderr}");
    dest
}

#[tokio::test]
async fn welcome_carries_a_store_id_that_survives_a_restart() {
    let mut server = Server::start(&[]);
    let first = store_id(&welcome(&server).await);

    server.signal("TERM");
    server.restart();

    assert!(first.len() >= 32, "{first}");
    assert_eq!(store_id(&welcome(&server).await), first);
}

#[tokio::test]
async fn two_stores_have_different_ids() {
    let a = Server::start(&[]);
    let b = Server::start(&[]);

    assert_ne!(store_id(&welcome(&a).await), store_id(&welcome(&b).await));
}

/// The case store ids exist for: a backup is restored, its ids are lower than
/// what a browser has seen, and new messages reuse them. A client that kept
/// its old offset would skip those messages; the changed `storeId` tells it
/// to start fresh, and then it gets them.
#[tokio::test]
async fn a_restored_backup_has_a_new_store_id_so_a_client_with_an_old_offset_starts_fresh() {
    let mut server = Server::start(&[]);
    let (mut alice, frames) = server.joined("alice", &["general"]).await;
    let original = store_id(&frames[0]);
    alice.say("general", "in the backup", "b-1").await;
    let backup = backup(&server, "backup.db");
    // Sent after the backup: lost by the restore, but seen by the client.
    let mut seen = 0;
    for i in 0..3 {
        let ack = alice
            .say("general", "after the backup", &format!("a-{i}"))
            .await;
        seen = ack["id"].as_i64().unwrap();
    }
    drop(alice);

    // Restore: stop, put the backup in place of the database, start.
    server.signal("TERM");
    for suffix in ["", "-wal", "-shm"] {
        let mut path = server.db.clone().into_os_string();
        path.push(suffix);
        let _ = std::fs::remove_file(path);
    }
    std::fs::copy(&backup, &server.db).unwrap();
    server.restart();
    let (mut bob, frames) = server.joined("bob", &["general"]).await;
    let restored = store_id(&frames[0]);
    let fresh = bob.say("general", "new after the restore", "n-1").await;
    let fresh_id = fresh["id"].as_i64().unwrap();

    assert_ne!(restored, original);
    assert!(
        fresh_id <= seen,
        "the restore reuses ids the client has seen"
    );
    // The client compares store ids, forgets its offset, and starts fresh.
    let mut client = server.client().await;
    client
        .send(json!({"type":"hello","nick":"alice","rooms":["general"]}))
        .await;
    let frames = client.until("synced").await;
    assert!(ids(&frames).contains(&fresh_id), "{frames:?}");
}

#[tokio::test]
async fn a_backup_copy_has_its_own_store_id() {
    let server = Server::start(&[]);
    let live = store_id(&welcome(&server).await);

    let backup = backup(&server, "copy.db");

    let copied: String = rusqlite::Connection::open(&backup)
        .unwrap()
        .query_row("SELECT value FROM meta WHERE key = 'store_id'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_ne!(copied, live);
    assert_eq!(
        store_id(&welcome(&server).await),
        live,
        "the live store keeps its id"
    );
}
