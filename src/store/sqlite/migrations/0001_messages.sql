-- Every chat message, forever. AUTOINCREMENT so an id is never reused, even
-- after rows are deleted by hand: clients keep ids as offsets.
CREATE TABLE messages (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    room          TEXT    NOT NULL,
    nick          TEXT    NOT NULL,
    text          TEXT    NOT NULL,
    ts            INTEGER NOT NULL,   -- commit time, ms since the Unix epoch
    client_offset TEXT    UNIQUE      -- the sender's idempotency key; NULLs never collide
);

-- Replay (room, id > N) and history paging (room, id < N) are range scans on this.
CREATE INDEX messages_room_id ON messages (room, id);
