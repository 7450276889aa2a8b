//! Screenshots of the main states, light and dark, desktop and phone, saved to
//! `screenshots/` (git-ignored; the README shows copies from `docs/img/`).

use std::path::{Path, PathBuf};

use crate::harness::{Chrome, Server, Tab, chromium, one_stored};

/// Width and height of a PNG, from its IHDR chunk.
fn png_size(path: &Path) -> (u32, u32) {
    let bytes = std::fs::read(path).expect("read screenshot");
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{} is not a PNG",
        path.display()
    );
    let be = |i: usize| u32::from_be_bytes(bytes[i..i + 4].try_into().unwrap());
    (be(16), be(20))
}

/// Relative luminance (0 black … 1 white) of the page background.
const BACKGROUND_LUMA: &str = "(() => { \
    const [r, g, b] = getComputedStyle(document.body).backgroundColor.match(/\\d+/g).map(Number); \
    return (0.2126 * r + 0.7152 * g + 0.0722 * b) / 255; })()";

/// bob keeps typing so that the line "bob is typing…" is up for the shot.
async fn keep_typing(bob: &Tab, alice: &Tab) {
    bob.type_into("#message-input", ".").await;
    alice
        .wait_for(
            "bob typing",
            "document.querySelector('#typing-line').textContent.includes('bob')",
        )
        .await;
}

/// A conversation between alice, bob and carol, with presence and typing on
/// screen, captured at 1280×800 and 375×740, light and dark. Checks that the
/// dark scheme is dark, the light one light, and that the phone layout fits
/// its width (no sideways scrolling, composer on screen).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn screenshots_of_the_main_states() {
    let Some(exe) = chromium() else { return };
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("screenshots");
    std::fs::create_dir_all(&out).expect("screenshots dir");
    let server = Server::start();
    let (alice_browser, bob_browser) = tokio::join!(Chrome::launch(&exe), Chrome::launch(&exe));
    let alice = alice_browser.open_chat(&server, "alice").await;
    let bob = bob_browser.open_chat(&server, "bob").await;

    // A second room for the sidebar, with unread messages in it.
    alice.type_into("#join-room-input", "random").await;
    alice.click("#join-room-btn").await;
    alice
        .wait_for(
            "random joined",
            "!!document.querySelector('#message-list[data-log-room=\"random\"] .log-top .beginning')",
        )
        .await;
    alice
        .click("#room-list button.room-btn[data-room=\"general\"]")
        .await;
    alice
        .wait_for(
            "general on screen",
            "document.querySelector('#room-title').textContent === '#general'",
        )
        .await;

    let conversation = [
        ("carol", "Morning all! Is the deploy still on for 11?"),
        (
            "alice",
            "Yes, right after standup. I'll post here when it starts.",
        ),
        ("bob", "I've got the backup from last night, just in case."),
        ("carol", "Great. The release notes are in the usual place."),
        ("alice", "Deploy started: natter 0.1 on the staging box."),
    ];
    for (nick, text) in conversation {
        match nick {
            "alice" => alice.send(text).await,
            "bob" => bob.send(text).await,
            _ => {
                server.post("general", nick, text).await;
            }
        }
        alice
            .wait_for("the conversation", &one_stored(nick, text))
            .await;
    }
    server.post("random", "carol", "Anyone up for lunch?").await;
    server.post("random", "dave", "Count me in").await;
    alice
        .wait_for(
            "two unread in random",
            "document.querySelector('[data-room=\"random\"] .badge').textContent === '2'",
        )
        .await;
    alice
        .wait_for(
            "two viewers",
            "document.querySelector('#viewer-count').dataset.count === '2'",
        )
        .await;
    bob.type_into("#message-input", "looks good so far").await;
    alice.park_mouse().await;

    let shots = [
        ("desktop-light", 1280, 800, false, false),
        ("desktop-dark", 1280, 800, false, true),
        ("phone-light", 375, 740, true, false),
        ("phone-dark", 375, 740, true, true),
    ];
    for (name, width, height, phone, dark) in shots {
        alice.emulate(width, height, phone, dark).await;
        keep_typing(&bob, &alice).await;
        // On a phone the room list is a drawer, closed: wait until it has slid away.
        let sidebar = if phone { "<= 0" } else { "> 0" };
        let fits = format!(
            "innerWidth === {width} && document.documentElement.scrollWidth <= innerWidth && \
             document.querySelector('#message-input').getBoundingClientRect().bottom <= innerHeight && \
             document.querySelector('#sidebar').getBoundingClientRect().right {sidebar}"
        );
        alice.wait_for("the layout to fit the screen", &fits).await;
        let luma: f64 = alice.eval(BACKGROUND_LUMA).await;
        if dark {
            assert!(
                luma < 0.3,
                "{name}: background luminance {luma} is not dark"
            );
        } else {
            assert!(
                luma > 0.7,
                "{name}: background luminance {luma} is not light"
            );
        }
        let drawer_button: bool = alice
            .eval("getComputedStyle(document.querySelector('#drawer-open')).display !== 'none'")
            .await;
        assert_eq!(
            drawer_button, phone,
            "{name}: the room list is a drawer on phones only"
        );

        let path = out.join(format!("{name}.png"));
        alice.screenshot(&path).await;
        let scale = if phone { 2 } else { 1 };
        assert_eq!(
            png_size(&path),
            (width as u32 * scale, height as u32 * scale),
            "{name}"
        );
    }
}
