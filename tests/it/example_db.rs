//! `chat.db.example`: made by natter's own store code, and it opens with the current schema.

use std::path::{Path, PathBuf};

use crate::helpers::{Server, messages};

fn example_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("chat.db.example")
}

/// What `cp chat.db.example chat.db` gives a new user.
const WELCOME: &[&str] = &[
    "Welcome to natter! 👋 This is #general, the room everyone starts in.",
    "Every message lives in chat.db, a plain SQLite file. Look inside with: sqlite3 chat.db 'SELECT id, nick, text FROM messages'",
    "Open this page in a second tab and talk to yourself: a message shows up everywhere at once.",
    "Stop the server mid-conversation and start it again: the page reconnects and catches up, with nothing lost and nothing twice.",
    "Join another room with the field under the room list. Have fun!",
];

#[tokio::test]
async fn example_database_opens_with_the_current_schema_and_has_welcome_messages() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chat.db");
    std::fs::copy(example_path(), &db).expect("chat.db.example is in the repository");
    let version: i64 = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version as usize, natter::store::schema_version());

    let server = Server::start_in(dir, db, &[]);
    let (_client, frames) = server.joined("newcomer", &["general"]).await;

    let texts: Vec<&str> = messages(&frames)
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, WELCOME);
}

/// Rebuilds chat.db.example with natter's own store code:
/// `cargo test --test it -- --ignored regenerate_chat_db_example`.
#[tokio::test]
#[ignore = "writes chat.db.example; run by hand after a schema change"]
async fn regenerate_chat_db_example() {
    let path = example_path();
    let _ = std::fs::remove_file(&path);
    let (store, writer) = natter::store::open(&path, 0, Box::new(|_| {})).expect("create");
    for (i, text) in WELCOME.iter().enumerate() {
        let appended = store
            .append(natter::store::NewMessage {
                room: "general".into(),
                nick: "natter".into(),
                text: text.to_string(),
                client_offset: Some(format!("example-{}", i + 1)),
                clear_draft: false,
                after_commit: None,
            })
            .await
            .unwrap()
            .await
            .unwrap()
            .unwrap();
        assert!(!appended.duplicate);
    }
    drop(store);
    // Joining closes the last connection, which folds the WAL into the file.
    tokio::task::spawn_blocking(move || writer.close())
        .await
        .unwrap();
    assert!(!path.with_extension("example-wal").exists());
}
