//! Rooms: joining from the sidebar, switching, unread badges.

use crate::harness::{Chrome, Server, chromium, one_stored};

const CURRENT: &str =
    "document.querySelector('#room-list .room-btn[aria-current=\"true\"]')?.dataset.room";

fn badge(room: &str) -> String {
    format!(
        "(() => {{ const b = document.querySelector('#room-list button.room-btn[data-room=\"{room}\"] .badge'); \
         return b && !b.hidden ? b.textContent : ''; }})()"
    )
}

/// alice joins `random` through the join form and goes back to `general`;
/// bob posts twice in `random`: its badge counts 1, then 2, and `general`
/// shows none. Switching to `random` clears the badge and shows both messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_badges_count_and_clear_when_switching() {
    let Some(exe) = chromium() else { return };
    let server = Server::start();
    let (alice_browser, bob_browser) = tokio::join!(Chrome::launch(&exe), Chrome::launch(&exe));
    let alice = alice_browser.open_chat(&server, "alice").await;

    alice.type_into("#join-room-input", "random").await;
    alice.click("#join-room-btn").await;
    alice
        .wait_for(
            "random in the room list, shown",
            &format!("{CURRENT} === 'random' && document.querySelector('#room-title').textContent === '#random'"),
        )
        .await;
    alice
        .wait_for(
            "random joined (the log says where it begins)",
            "!!document.querySelector('#message-list[data-log-room=\"random\"] .log-top .beginning')",
        )
        .await;
    alice
        .click("#room-list button.room-btn[data-room=\"general\"]")
        .await;
    alice
        .wait_for("general shown again", &format!("{CURRENT} === 'general'"))
        .await;

    // bob, in his own browser, in random.
    let bob = bob_browser.new_tab().await;
    bob.goto(&server.url("/")).await;
    bob.choose_nick("bob").await;
    bob.wait_connected().await;
    bob.type_into("#join-room-input", "random").await;
    bob.click("#join-room-btn").await;
    bob.wait_for("bob in random", &format!("{CURRENT} === 'random'"))
        .await;
    bob.wait_for(
        "bob's random synced",
        "!!document.querySelector('#message-list[data-log-room=\"random\"] .log-top .beginning')",
    )
    .await;

    bob.send("anyone in random?").await;
    alice
        .wait_for(
            "random's badge at 1",
            &format!("{} === '1'", badge("random")),
        )
        .await;
    bob.send("hello? random here").await;
    alice
        .wait_for(
            "random's badge at 2",
            &format!("{} === '2'", badge("random")),
        )
        .await;
    assert_eq!(
        alice.eval::<String>(&badge("general")).await,
        "",
        "no badge on the room on screen"
    );
    assert_eq!(
        alice.count("anyone in random?").await,
        0,
        "random's messages are not in general's log"
    );

    alice
        .click("#room-list button.room-btn[data-room=\"random\"]")
        .await;
    alice
        .wait_for("random shown", &format!("{CURRENT} === 'random'"))
        .await;
    alice
        .wait_for("the badge gone", &format!("{} === ''", badge("random")))
        .await;
    alice
        .wait_for("bob's first", &one_stored("bob", "anyone in random?"))
        .await;
    alice
        .wait_for("bob's second", &one_stored("bob", "hello? random here"))
        .await;
    alice.assert_ids_unique_ascending().await;
    let has_unread: bool = alice
        .eval("document.querySelector('#room-list .room-btn[data-room=\"random\"]').classList.contains('has-unread')")
        .await;
    assert!(!has_unread);

    // Read is read: back in general, random has no badge, and the next
    // message counts from zero again.
    alice
        .click("#room-list button.room-btn[data-room=\"general\"]")
        .await;
    alice
        .wait_for("general shown again", &format!("{CURRENT} === 'general'"))
        .await;
    assert_eq!(
        alice.eval::<String>(&badge("random")).await,
        "",
        "{}",
        alice.describe().await
    );
    bob.send("one more in random").await;
    alice
        .wait_for(
            "random's badge at 1 again",
            &format!("{} === '1'", badge("random")),
        )
        .await;
}
