//! One id order per connection across all its rooms, so a client's single `serverOffset` never skips a message.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{Client, Server};

/// Keep sending alternately to rooms `a` and `b` until `count` are acked.
async fn send_alternating(mut sender: Client, count: usize) {
    for i in 0..count {
        let room = if i % 2 == 0 { "a" } else { "b" };
        sender
            .send(json!({"type":"send","room":room,"text":format!("m{i}"),"clientOffset":format!("alt-{i}")}))
            .await;
        if i % 20 == 19 {
            // A little pacing keeps both rooms busy over the whole test.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let mut acks = 0;
    while acks < count {
        if sender.recv().await["type"] == "ack" {
            acks += 1;
        }
    }
}

fn message_ids(frames: &[Value]) -> Vec<(String, i64)> {
    frames
        .iter()
        .filter(|f| f["type"] == "message")
        .map(|f| {
            (
                f["room"].as_str().unwrap().to_string(),
                f["id"].as_i64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn live_messages_of_several_rooms_arrive_in_one_increasing_id_order() {
    let server = Server::start(&["--sends-per-10s", "0"]);
    let (mut observer, _) = server.joined("observer", &["a", "b"]).await;
    let (sender, _) = server.joined("sender", &["a", "b"]).await;
    let total = 600;

    let sending = tokio::spawn(send_alternating(sender, total));
    let mut frames = Vec::new();
    while message_ids(&frames).len() < total {
        frames.push(observer.recv().await);
    }
    sending.await.unwrap();

    let ids: Vec<i64> = message_ids(&frames).into_iter().map(|(_, id)| id).collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "ids out of order across rooms: {:?}",
        ids.windows(2).find(|w| w[0] >= w[1])
    );
}

#[tokio::test]
async fn rooms_joined_while_others_are_live_keep_the_one_id_order() {
    let server = Server::start(&["--sends-per-10s", "0", "--history-on-join", "100"]);
    let (mut observer, _) = server.joined("observer", &["a"]).await;
    let (sender, _) = server.joined("sender", &["a", "b"]).await;
    let sending = tokio::spawn(send_alternating(sender, 4_000));

    // Join and leave `b` over and over while both rooms are busy.
    let mut frames = Vec::new();
    for _ in 0..25 {
        observer.send(json!({"type":"join","room":"b"})).await;
        frames.extend(observer.until("synced").await);
        observer.send(json!({"type":"leave","room":"b"})).await;
        frames.extend(observer.until("left").await);
    }
    sending.await.unwrap();

    // A client stores the highest id it has seen. Every message must be above
    // it when it arrives, or a client stopping just before would reconnect
    // above a message it never got. The one exception is a joined room's
    // history at or below what the client had already seen when it joined:
    // older than its offset by definition, and only there because asked for.
    let mut highest = 0;
    let mut covered_at_join = None;
    for frame in &frames {
        match frame["type"].as_str() {
            Some("joined") => covered_at_join = Some(highest),
            Some("synced") => covered_at_join = None,
            Some("message") => {
                let id = frame["id"].as_i64().unwrap();
                let history = frame["room"] == "b" && covered_at_join.is_some_and(|c| id <= c);
                if !history {
                    assert!(id > highest, "message {id} arrived after {highest}");
                }
                highest = highest.max(id);
            }
            _ => {}
        }
    }
}
