/*
 * offsets.js: how far this page has read the server's store: `serverOffset`,
 * the highest message id seen (docs/protocol.md section 2).
 *
 * Owns: KEY.offset. It is shared by the tabs of this browser; the stored
 * offset only ever grows, whichever tab writes it.
 * May not touch: the DOM, the socket.
 */

import * as storage from './storage.js';
import { KEY } from './storage.js';

let serverOffset = null;   // highest message id seen (persisted)

export function load() {
  const offset = storage.getInt(KEY.offset);
  serverOffset = offset != null && offset >= 0 ? offset : null;
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

