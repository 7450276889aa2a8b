/*
 * offsets.js: how far this page has read the server's store, and which store
 * that was. `serverOffset` is the highest message id seen (docs/protocol.md
 * section 2). `storeId` (in welcome, protocol version 2: "Store identity")
 * names the store those ids count in: a restored backup gets a new one, and
 * its ids may be lower than ours, so an offset from another store must not
 * be sent.
 *
 * Owns: KEY.offset and KEY.storeId. Both are shared by the tabs of this
 * browser; the stored offset only ever grows, whichever tab writes it.
 * May not touch: the DOM, the socket, or what else a change of store forgets
 * (main.js decides that).
 */

import * as storage from './storage.js';
import { KEY } from './storage.js';

let serverOffset = null;   // highest message id seen (persisted)
let storeId = null;        // the store serverOffset counts in (persisted)

export function load() {
  const offset = storage.getInt(KEY.offset);
  serverOffset = offset != null && offset >= 0 ? offset : null;
  storeId = storage.get(KEY.storeId) || null;
}

export const get = () => serverOffset;

/** Before a hello: another tab may have read further. Returns the offset to send. */
export function catchUp() {
  const stored = storage.getInt(KEY.offset);
  if (stored != null) serverOffset = Math.max(serverOffset || 0, stored);
  return serverOffset;
}

export function bump(n) {
  if (!Number.isSafeInteger(n) || n < 0) return;
  if (serverOffset != null && n <= serverOffset) return;
  serverOffset = n;
  // Another tab may have gone further; never write a smaller value.
  const stored = storage.getInt(KEY.offset);
  if (stored == null || stored < n) storage.set(KEY.offset, String(n));
}

/**
 * A welcome's storeId: remembered, and true when it names another store than
 * the one this page knew (then the offset and everything cached from that
 * store are stale). No storeId (an older server) changes nothing, and the
 * first one ever seen is only remembered.
 */
export function storeChanged(id) {
  if (typeof id !== 'string' || id === '') return false;
  // This tab's own memory first: another tab may already have stored the new id.
  const known = storeId ?? storage.get(KEY.storeId);
  storeId = id;
  storage.set(KEY.storeId, id);
  return known != null && known !== id;
}

/** Forgets the offset: the next hello asks for the newest messages, as on a first visit. */
export function forget() {
  serverOffset = null;
  storage.remove(KEY.offset);
}
