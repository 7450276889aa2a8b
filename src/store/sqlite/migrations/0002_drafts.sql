-- The unsent text of each (nick, room), written at most once a second per key
-- and deleted when the draft is cleared or sent.
CREATE TABLE drafts (
    nick       TEXT    NOT NULL,
    room       TEXT    NOT NULL,
    text       TEXT    NOT NULL,
    updated_at INTEGER NOT NULL,   -- ms since the Unix epoch, when it was typed
    PRIMARY KEY (nick, room)
) WITHOUT ROWID;
