//! What one connection has been given: each room's delivery mark, the one id order across rooms, and the paged replay that every hello, join and catch-up goes through.
//!
//! This is where "exactly once, in id order" is decided for a connection;
//! nothing else compares ids. It does no I/O of its own: the store is
//! reached through `Pages`, and the caller writes what it is handed, so it
//! is tested without sockets (unit tests and proptest below).
//!
//! # The rules
//! - A room's mark says: every event of this room up to here has been
//!   written on this connection, or is older than what the client asked for.
//!   A live event at or below the mark is not owed (`claim`).
//! - Why one id order across rooms and not only per room: a client keeps
//!   one `serverOffset`, the highest id it has seen in any room. If room B's
//!   event 11 reached it before room A's event 10 and the connection then
//!   dropped, reconnecting with offset 11 would skip 10 forever. Live events
//!   arrive in id order already (one inbox per connection, filled by the
//!   store's writer in commit order); replays read every joined room at once,
//!   merged by id (`Replay`), at least up to a point `upto` at or below which
//!   the store has committed everything, and only then does the connection
//!   go back to its inbox, whose older copies the marks now skip.
//! - A full replay page that ends at id L completes every room it read up to
//!   L: the page held, in id order, everything those rooms had above their
//!   marks. The last, short page completes them up to `upto` (or the last id
//!   it held, if the store gave more: it only ever gives committed events).

use std::collections::HashMap;
use std::sync::Arc;

use crate::protocol::ChatMessage;
use crate::store::{Store, StoreError};

/// Rows read per page while replaying: bounds memory per connection no
/// matter how long the client was away.
pub const REPLAY_PAGE: usize = 500;

/// The delivery record of one connection: its rooms, each with its mark and
/// whatever else the connection keeps per room (`T`).
#[derive(Debug)]
pub struct Delivery<T> {
    rooms: HashMap<Arc<str>, Joined<T>>,
    /// Highest id written on this connection, for `synced.serverOffset`.
    max_delivered: i64,
}

#[derive(Debug)]
struct Joined<T> {
    mark: i64,
    state: T,
}

impl<T> Default for Delivery<T> {
    fn default() -> Self {
        Delivery {
            rooms: HashMap::new(),
            max_delivered: 0,
        }
    }
}

impl<T> Delivery<T> {
    /// Deliver `room` from after `from`: a new room, or a room joined again,
    /// whose replay then starts over from `from` (protocol section 4: a
    /// repeated join is answered as a new one). `state` is kept for a room
    /// already joined.
    pub fn enter(&mut self, room: Arc<str>, from: i64, state: impl FnOnce() -> T) {
        match self.rooms.get_mut(&room) {
            Some(joined) => joined.mark = from,
            None => {
                self.rooms.insert(
                    room,
                    Joined {
                        mark: from,
                        state: state(),
                    },
                );
            }
        }
    }

    /// Stop delivering `room`; its per-room state, if it was joined.
    pub fn leave(&mut self, room: &str) -> Option<T> {
        self.rooms.remove(room).map(|joined| joined.state)
    }

    pub fn contains(&self, room: &str) -> bool {
        self.rooms.contains_key(room)
    }

    pub fn len(&self) -> usize {
        self.rooms.len()
    }

    pub fn rooms(&self) -> Vec<Arc<str>> {
        self.rooms.keys().cloned().collect()
    }

    pub fn state_mut(&mut self, room: &str) -> Option<&mut T> {
        self.rooms.get_mut(room).map(|joined| &mut joined.state)
    }

    /// Whether event `id` of `room` is still owed (a joined room, above its
    /// mark). If so it counts as delivered from now on, and the caller writes it.
    pub fn claim(&mut self, room: &str, id: i64) -> bool {
        // One lookup: this runs for every live delivery.
        match self.rooms.get_mut(room) {
            Some(joined) if id > joined.mark => {
                joined.mark = id;
                self.max_delivered = self.max_delivered.max(id);
                true
            }
            _ => false,
        }
    }

    /// Everything of `room` up to `upto` is delivered or not owed.
    fn complete(&mut self, room: &str, upto: i64) {
        if let Some(joined) = self.rooms.get_mut(room) {
            joined.mark = joined.mark.max(upto);
        }
    }

    /// `synced.serverOffset` (section 2): the largest of the store's newest
    /// id when the sequence began, the highest id delivered, and the
    /// client's own offset.
    pub fn synced_offset(&self, newest: i64, client_offset: Option<i64>) -> i64 {
        newest
            .max(self.max_delivered)
            .max(client_offset.unwrap_or(0))
    }

    /// A replay of `rooms` at least up to `upto`: every event of theirs above
    /// their marks, and the other joined rooms untouched. `upto` must be an
    /// id up to which the store has committed everything (its newest id), so
    /// that nothing at or below it can still commit.
    pub fn replay(&self, rooms: Vec<Arc<str>>, upto: i64) -> Replay {
        Replay {
            rooms,
            upto,
            page: REPLAY_PAGE,
            done: false,
        }
    }

    /// A catch-up after a lag: every joined room, at least up to `upto`.
    pub fn catch_up(&self, upto: i64) -> Replay {
        self.replay(self.rooms(), upto)
    }
}

/// Where a replay reads its pages: the store, or a list in tests.
pub trait Pages {
    /// The first `limit` committed events, in id order, of each room in
    /// `after` above its own id, holding at least those up to `upto` (see
    /// `Store::messages_after`).
    fn page(
        &self,
        after: Vec<(Arc<str>, i64)>,
        upto: i64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<ChatMessage>, StoreError>> + Send;
}

impl Pages for Store {
    fn page(
        &self,
        after: Vec<(Arc<str>, i64)>,
        upto: i64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<ChatMessage>, StoreError>> + Send {
        self.messages_after(after, upto, limit)
    }
}

/// One paged replay in progress; see `Delivery::replay`.
#[derive(Debug)]
pub struct Replay {
    rooms: Vec<Arc<str>>,
    upto: i64,
    page: usize,
    done: bool,
}

impl Replay {
    /// Page size, for tests that need many pages from few events.
    #[cfg(test)]
    fn with_page(mut self, page: usize) -> Replay {
        self.page = page.max(1);
        self
    }

    /// The next page of events still owed, already claimed in `delivery`,
    /// for the caller to write in order; `None` once the replay is complete
    /// (its rooms are then delivered at least up to `upto`). A page may be
    /// empty when everything in it was already delivered.
    pub async fn next<T, P: Pages>(
        &mut self,
        delivery: &mut Delivery<T>,
        pages: &P,
    ) -> Result<Option<Vec<ChatMessage>>, StoreError> {
        if self.done {
            return Ok(None);
        }
        let upto = self.upto;
        // Every room of the replay, also one already complete up to `upto`:
        // the store may hand over more than `upto` for some rooms, and the
        // merge by id must then cover all of them alike.
        let after: Vec<(Arc<str>, i64)> = self
            .rooms
            .iter()
            .filter_map(|room| Some((room.clone(), delivery.rooms.get(room)?.mark)))
            .collect();
        if after.is_empty() {
            self.done = true;
            return Ok(None);
        }
        let page = pages.page(after.clone(), upto, self.page).await?;
        let last = page.last().map_or(0, |m| m.id);
        let reached = if page.len() >= self.page {
            last
        } else {
            self.done = true;
            upto.max(last)
        };
        let owed: Vec<ChatMessage> = page
            .into_iter()
            .filter(|m| delivery.claim(&m.room, m.id))
            .collect();
        for (room, _) in &after {
            delivery.complete(room, reached);
        }
        Ok(Some(owed))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::collections::{BTreeSet, VecDeque};

    use futures_util::FutureExt;
    use proptest::prelude::*;

    use super::*;

    /// The store as a list of committed events, in id order (id = index + 1).
    #[derive(Default, Clone)]
    struct Log(Vec<Arc<str>>);

    impl Log {
        fn commit(&mut self, room: &str) -> i64 {
            self.0.push(room.into());
            self.0.len() as i64
        }
        fn newest(&self) -> i64 {
            self.0.len() as i64
        }
        fn event(&self, id: i64) -> ChatMessage {
            ChatMessage {
                id,
                room: self.0[id as usize - 1].to_string(),
                nick: "n".into(),
                text: "t".into(),
                ts: 0,
                client_offset: None,
            }
        }
    }

    impl Pages for Log {
        fn page(
            &self,
            after: Vec<(Arc<str>, i64)>,
            _upto: i64,
            limit: usize,
        ) -> impl Future<Output = Result<Vec<ChatMessage>, StoreError>> + Send {
            // Everything committed, like SQLite's single writer.
            let rows: Vec<ChatMessage> = (1..=self.newest())
                .map(|id| self.event(id))
                .filter(|m| after.iter().any(|(r, a)| **r == *m.room && m.id > *a))
                .take(limit)
                .collect();
            std::future::ready(Ok(rows))
        }
    }

    fn drain(replay: &mut Replay, delivery: &mut Delivery<()>, log: &Log) -> Vec<i64> {
        let mut ids = Vec::new();
        while let Some(page) = replay.next(delivery, log).now_or_never().unwrap().unwrap() {
            ids.extend(page.iter().map(|m| m.id));
        }
        ids
    }

    fn log_of(rooms: &[&str]) -> Log {
        let mut log = Log::default();
        for room in rooms {
            log.commit(room);
        }
        log
    }

    #[test]
    fn a_replay_sends_what_is_above_the_offset_in_pages_and_completes_the_room() {
        let log = log_of(&["a", "b", "a", "a", "b", "a"]);
        let mut delivery = Delivery::default();
        delivery.enter("a".into(), 1, || ());

        let mut replay = delivery.replay(vec!["a".into()], log.newest()).with_page(2);
        assert_eq!(drain(&mut replay, &mut delivery, &log), [3, 4, 6]);

        // Complete up to the newest id: a live copy of 6 is not owed, 7 is.
        assert!(!delivery.claim("a", 6));
        assert!(delivery.claim("a", 7));
    }

    #[test]
    fn a_replay_of_several_rooms_is_merged_by_id() {
        let log = log_of(&["a", "b", "c", "b", "a", "c", "a"]);
        let mut delivery = Delivery::default();
        delivery.enter("a".into(), 0, || ());
        delivery.enter("b".into(), 3, || ());
        delivery.enter("c".into(), 7, || ());

        let mut replay = delivery.catch_up(log.newest()).with_page(1);
        assert_eq!(drain(&mut replay, &mut delivery, &log), [1, 4, 5, 7]);
    }

    #[test]
    fn events_already_delivered_live_are_not_replayed() {
        let log = log_of(&["a", "a", "a"]);
        let mut delivery = Delivery::default();
        delivery.enter("a".into(), 0, || ());
        assert!(delivery.claim("a", 2));

        let mut replay = delivery.catch_up(log.newest());
        assert_eq!(drain(&mut replay, &mut delivery, &log), [3]);
    }

    #[test]
    fn joining_again_replays_from_the_new_offset() {
        let log = log_of(&["a", "a", "a"]);
        let mut delivery = Delivery::default();
        delivery.enter("a".into(), 0, || ());
        drain(&mut delivery.catch_up(3), &mut delivery, &log);

        delivery.enter("a".into(), 1, || ());
        let mut replay = delivery.replay(vec!["a".into()], 3);
        assert_eq!(drain(&mut replay, &mut delivery, &log), [2, 3]);
    }

    #[test]
    fn a_room_left_is_not_owed_anything() {
        let mut delivery: Delivery<()> = Delivery::default();
        delivery.enter("a".into(), 0, || ());
        assert!(delivery.leave("a").is_some());
        assert!(!delivery.claim("a", 1));
        assert!(delivery.leave("a").is_none());
    }

    #[test]
    fn synced_offset_is_the_largest_of_newest_delivered_and_the_clients() {
        let mut delivery: Delivery<()> = Delivery::default();
        delivery.enter("a".into(), 0, || ());
        delivery.claim("a", 12);
        assert_eq!(delivery.synced_offset(10, Some(5)), 12);
        assert_eq!(delivery.synced_offset(10, Some(20)), 20);
        assert_eq!(delivery.synced_offset(30, None), 30);
    }

    // The model below runs one connection against a store and a hub, with
    // commits from elsewhere landing between any two steps of it.

    const ROOMS: [&str; 3] = ["a", "b", "c"];
    /// A tiny inbox, so that lags and catch-ups happen often.
    const INBOX: usize = 4;

    #[derive(Debug, Clone)]
    enum Op {
        /// Someone commits an event in a room.
        Commit(usize),
        /// The connection joins a room it is not in, from the highest id it
        /// has seen, or from some way between that and the newest id.
        Join(usize, Option<u8>),
        Leave(usize),
        /// The connection does one step of work: a replay page, or its inbox.
        Step,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..ROOMS.len()).prop_map(Op::Commit),
            1 => (0..ROOMS.len(), proptest::option::of(0u8..=4)).prop_map(|(r, o)| Op::Join(r, o)),
            1 => (0..ROOMS.len()).prop_map(Op::Leave),
            3 => Just(Op::Step),
        ]
    }

    #[derive(Default)]
    struct Model {
        log: Log,
        delivery: Delivery<()>,
        /// Rooms whose events the hub pushes into the inbox.
        subscribed: BTreeSet<usize>,
        inbox: VecDeque<(usize, i64)>,
        lagged: bool,
        replay: Option<Replay>,
        page: usize,
        written: Vec<(usize, i64)>,
        /// Each joined room's offset, for the completeness check.
        joined_from: HashMap<usize, i64>,
    }

    impl Model {
        fn apply(&mut self, op: Op) {
            match op {
                Op::Commit(room) => {
                    let id = self.log.commit(ROOMS[room]);
                    if self.subscribed.contains(&room) {
                        if self.lagged || self.inbox.len() >= INBOX {
                            self.lagged = true;
                        } else {
                            self.inbox.push_back((room, id));
                        }
                    }
                }
                Op::Join(room, offset) => {
                    if self.replay.is_some() || self.subscribed.contains(&room) {
                        return;
                    }
                    // Subscribe first, then read the newest id, as the connection does.
                    self.subscribed.insert(room);
                    // A client joins from the highest id it has seen (as the
                    // page does), or from further on; never from before it.
                    let newest = self.log.newest();
                    let seen = self.written.iter().map(|(_, id)| *id).max().unwrap_or(0);
                    let from = seen + offset.map_or(0, |o| (newest - seen) * i64::from(o) / 4);
                    self.joined_from.insert(room, from);
                    self.delivery.enter(ROOMS[room].into(), from, || ());
                    let all = self.delivery.rooms();
                    self.replay = Some(self.delivery.replay(all, newest).with_page(self.page));
                }
                Op::Leave(room) => {
                    if self.replay.is_some() || !self.subscribed.remove(&room) {
                        return;
                    }
                    self.delivery.leave(ROOMS[room]);
                    self.joined_from.remove(&room);
                }
                Op::Step => self.step(),
            }
        }

        fn step(&mut self) {
            if let Some(replay) = &mut self.replay {
                match replay
                    .next(&mut self.delivery, &self.log)
                    .now_or_never()
                    .unwrap()
                    .unwrap()
                {
                    Some(page) => self.written.extend(
                        page.iter()
                            .map(|m| (ROOMS.iter().position(|r| *r == m.room).unwrap(), m.id)),
                    ),
                    None => self.replay = None,
                }
                return;
            }
            // The connection takes its whole inbox, as `Inbox::take` does.
            let events = std::mem::take(&mut self.inbox);
            let lagged = std::mem::take(&mut self.lagged);
            for (room, id) in events {
                if self.delivery.claim(ROOMS[room], id) {
                    self.written.push((room, id));
                }
            }
            if lagged {
                let newest = self.log.newest();
                self.replay = Some(self.delivery.catch_up(newest).with_page(self.page));
            }
        }

        fn settle(&mut self) {
            for _ in 0..10_000 {
                if self.replay.is_none() && self.inbox.is_empty() && !self.lagged {
                    return;
                }
                self.step();
            }
            panic!("the connection never settled");
        }
    }

    proptest! {
        // A failure prints its minimal case; nothing is written to the tree.
        #![proptest_config(ProptestConfig {
            cases: 512,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn every_event_owed_is_written_once_in_one_id_order(
            ops in proptest::collection::vec(op(), 1..120),
            page in 1usize..5,
        ) {
            let mut model = Model { page, ..Model::default() };
            for op in ops {
                model.apply(op);
            }
            model.settle();

            // One id order across rooms, hence no event twice.
            let ids: Vec<i64> = model.written.iter().map(|(_, id)| *id).collect();
            prop_assert!(ids.windows(2).all(|w| w[0] < w[1]), "not in id order: {:?}", ids);
            // Nothing that was not asked for.
            for (room, id) in &model.written {
                prop_assert_eq!(&*model.log.0[*id as usize - 1], ROOMS[*room]);
            }
            // Everything of every room still joined, above its offset.
            for (room, from) in &model.joined_from {
                let owed: Vec<i64> = (from + 1..=model.log.newest())
                    .filter(|id| &*model.log.0[*id as usize - 1] == ROOMS[*room])
                    .collect();
                let got: Vec<i64> = model
                    .written
                    .iter()
                    .filter(|(r, id)| r == room && id > from)
                    .map(|(_, id)| *id)
                    .collect();
                prop_assert_eq!(got, owed, "room {}", ROOMS[*room]);
            }
        }
    }
}
