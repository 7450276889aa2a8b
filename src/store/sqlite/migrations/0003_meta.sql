-- Facts about the store itself. `store_id` is the store's identity
-- (protocol "Store identity"): made here, when the store is created (or
-- first opened by a natter that knows it), and made anew in every copy
-- `natter backup` writes, so a client can tell a restored backup from the
-- store whose offsets it kept.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;

INSERT INTO meta (key, value) VALUES ('store_id', lower(hex(randomblob(16))));
