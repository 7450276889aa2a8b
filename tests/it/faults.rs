//! Faults: a full database gives `internal` errors, the server stays up, nothing acknowledged is lost, and it recovers when space returns.

use serde_json::json;

use crate::helpers::Server;

#[tokio::test]
async fn full_database_answers_internal_keeps_acked_messages_and_recovers() {
    // 1 MiB cap: a few hundred 3,000-character messages fill it.
    let server = Server::start(&["--max-db-mb", "1", "--sends-per-10s", "0"]);
    let (mut alice, _) = server.joined("alice", &["general"]).await;
    let text = "x".repeat(3000);
    let mut acked = Vec::new();
    let mut failed = None;
    for i in 0..2_000 {
        let offset = format!("fill-{i}");
        alice
            .send(json!({"type":"send","room":"general","text":text,"clientOffset":offset}))
            .await;
        let reply = loop {
            let frame = alice.recv().await;
            if frame["type"] == "ack" || frame["type"] == "error" {
                break frame;
            }
        };
        if reply["type"] == "ack" {
            acked.push(reply["id"].as_i64().unwrap());
        } else {
            assert_eq!(reply["code"], "internal", "{reply}");
            assert_eq!(reply["ref"], offset.as_str());
            failed = Some(offset);
            break;
        }
    }
    let failed = failed.expect("the database never filled up");
    assert!(!acked.is_empty());

    // Still up and usable, and everything acknowledged is stored.
    alice.assert_usable().await;
    let stored = server.count_rows("room = 'general'");
    assert_eq!(stored, acked.len() as i64);

    // Space returns (an operator deletes old messages); the retry succeeds.
    server
        .sqlite()
        .execute(
            "DELETE FROM messages WHERE id <= ?1",
            [acked[acked.len() / 2]],
        )
        .unwrap();
    let retry = alice.say("general", &text, &failed).await;
    assert!(retry.get("duplicate").is_none());
    assert_eq!(server.count_rows(&format!("client_offset = '{failed}'")), 1);
}
