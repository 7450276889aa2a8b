//! Presence of one room: who is here with how many connections, the grace period before a nick leaves, and coalesced diffs.
//!
//! Everything here runs under the room's lock, so joins must cost O(1) apart
//! from the member list a joiner is owed. That list is kept ready: each
//! member's entry of the `presence` frame is serialized when its count
//! changes, so a joiner's frame is one copy of those entries, not a
//! serialization of the whole room. Changes to the member set
//! are logged in a `window` until the next diff, and a connection that joined
//! mid-window computes its first diff from the part of the window it did not
//! see, instead of from a copy of the whole member set.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Handle;
use crate::protocol;

/// A change to the member set: `nick` became present, or left for good.
#[derive(Debug, Clone)]
pub struct Change {
    pub nick: Arc<str>,
    pub present: bool,
}

/// A diff to announce: the new viewer count and the changes since the last one.
pub struct Diff {
    pub seq: u64,
    pub viewers: usize,
    /// The count the previous diff announced.
    pub previous_viewers: usize,
    pub window: Arc<[Change]>,
}

/// What one connection was told when it joined (its `presence` frame).
#[derive(Debug, Clone, Copy)]
pub struct PresenceView {
    /// The `seq` of the first diff sent after this view was taken.
    pub next_seq: u64,
    /// How many entries of that diff's window the view already includes.
    pub seen: usize,
    pub viewers: usize,
}

struct Member {
    connections: Vec<Handle>,
    /// This member's entry of the `presence` frame, kept current.
    entry: String,
    /// Set when the last connection left; the nick is announced as gone once
    /// this is older than the grace period.
    gone_since: Option<Instant>,
}

#[derive(Default)]
pub struct RoomPresence {
    members: BTreeMap<Arc<str>, Member>,
    viewers: usize,
    /// Member-set changes since the last diff, in order.
    window: Vec<Change>,
    announced_viewers: usize,
    /// Diffs sent so far.
    seq: u64,
}

impl RoomPresence {
    /// Count a new connection of `nick`.
    pub fn join(&mut self, nick: &str, handle: &Handle) {
        match self.members.get_mut(nick) {
            Some(member) => {
                member.connections.push(handle.clone());
                member.entry = protocol::presence_member(nick, member.connections.len());
                member.gone_since = None;
            }
            None => {
                let nick: Arc<str> = nick.into();
                self.members.insert(
                    nick.clone(),
                    Member {
                        connections: vec![handle.clone()],
                        entry: protocol::presence_member(&nick, 1),
                        gone_since: None,
                    },
                );
                self.window.push(Change {
                    nick,
                    present: true,
                });
            }
        }
        self.viewers += 1;
    }

    /// The connection went; its nick stays a member for the grace period.
    pub fn leave(&mut self, nick: &str, connection: u64, now: Instant) {
        let Some(member) = self.members.get_mut(nick) else {
            return;
        };
        let before = member.connections.len();
        member.connections.retain(|h| h.id != connection);
        if member.connections.len() < before {
            self.viewers -= 1;
            member.entry = protocol::presence_member(nick, member.connections.len());
            if member.connections.is_empty() {
                member.gone_since = Some(now);
            }
        }
    }

    /// The connections of `nick` (for draft echoes).
    pub fn connections(&self, nick: &str) -> &[Handle] {
        self.members
            .get(nick)
            .map_or(&[], |m| m.connections.as_slice())
    }

    /// Every open connection in the room, with its nick.
    pub fn each_connection(&self) -> impl Iterator<Item = (&Arc<str>, &Handle)> {
        self.members
            .iter()
            .flat_map(|(nick, m)| m.connections.iter().map(move |h| (nick, h)))
    }

    pub fn viewers(&self) -> usize {
        self.viewers
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The `presence` frame for a connection that just joined (it counts
    /// already), and what it says, for that connection's first diff.
    pub fn snapshot(&self, room: &str) -> (PresenceView, String) {
        let view = PresenceView {
            next_seq: self.seq + 1,
            seen: self.window.len(),
            viewers: self.viewers,
        };
        let entries = self.members.values().map(|m| m.entry.as_str());
        (view, protocol::presence_frame(room, self.viewers, entries))
    }

    /// Drop nicks whose grace period is over, then return the diff to
    /// announce, if anything changed since the last one.
    pub fn tick(&mut self, now: Instant, grace: Duration) -> Option<Diff> {
        let window = &mut self.window;
        self.members.retain(|nick, m| {
            let keep = !m.connections.is_empty()
                || m.gone_since.is_none_or(|t| now.duration_since(t) < grace);
            if !keep {
                window.push(Change {
                    nick: nick.clone(),
                    present: false,
                });
            }
            keep
        });
        if self.window.is_empty() && self.viewers == self.announced_viewers {
            return None;
        }
        self.seq += 1;
        let previous_viewers = std::mem::replace(&mut self.announced_viewers, self.viewers);
        Some(Diff {
            seq: self.seq,
            viewers: self.viewers,
            previous_viewers,
            window: std::mem::take(&mut self.window).into(),
        })
    }
}

/// The `presence_diff` for a window of changes, or `None` when, seen from
/// someone who already knew the first `seen` changes and `known_viewers`,
/// nothing changed.
pub fn diff_frame(
    room: &str,
    viewers: usize,
    window: &[Change],
    seen: usize,
    known_viewers: usize,
) -> Option<String> {
    // A nick's state before the unseen part is the opposite of its first
    // unseen change; its state after is its last change.
    let mut net: BTreeMap<&str, (bool, bool)> = BTreeMap::new();
    for change in window.iter().skip(seen) {
        net.entry(&change.nick)
            .and_modify(|(_, last)| *last = change.present)
            .or_insert((!change.present, change.present));
    }
    let joins: Vec<&str> = net
        .iter()
        .filter(|(_, (before, after))| !before && *after)
        .map(|(nick, _)| *nick)
        .collect();
    let leaves: Vec<&str> = net
        .iter()
        .filter(|(_, (before, after))| *before && !after)
        .map(|(nick, _)| *nick)
        .collect();
    if joins.is_empty() && leaves.is_empty() && viewers == known_viewers {
        return None;
    }
    Some(protocol::presence_diff_frame(
        room, viewers, &joins, &leaves,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(nick: &str, present: bool) -> Change {
        Change {
            nick: nick.into(),
            present,
        }
    }

    #[test]
    fn a_join_and_leave_in_one_window_cancel_out() {
        let window = [change("bob", true), change("bob", false)];
        assert_eq!(diff_frame("r", 1, &window, 0, 1), None);
    }

    #[test]
    fn changes_already_seen_are_not_repeated() {
        let window = [change("me", true), change("carol", true)];
        let frame = diff_frame("r", 3, &window, 1, 2).unwrap_or_default();
        assert!(frame.contains(r#""joins":["carol"]"#), "{frame}");
    }

    #[test]
    fn a_viewer_count_change_alone_is_a_diff() {
        let frame = diff_frame("r", 2, &[], 0, 1).unwrap_or_default();
        assert!(
            frame.contains(r#""viewers":2,"joins":[],"leaves":[]"#),
            "{frame}"
        );
    }
}
