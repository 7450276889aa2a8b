/*
 * storage.js: what the page keeps in localStorage, and under which names.
 *
 * Owns: the KEY table (every key the page uses; the comment beside each names
 * the one module that reads and writes it) and access that never throws:
 * localStorage throws in private mode, over quota or when disabled, and the
 * page then keeps working from memory.
 * May not touch: the DOM, the socket, or decide what a value means.
 */

export const KEY = {
  nick: 'natter.nick',                // identity.js
  token: 'natter.token',              // identity.js
  device: 'natter.devicePrefix',      // identity.js
  counter: 'natter.sendCounter',      // identity.js
  offset: 'natter.serverOffset',      // offsets.js
  storeId: 'natter.storeId',          // offsets.js
  rooms: 'natter.rooms',              // rooms.js
  current: 'natter.currentRoom',      // rooms.js
  known: 'natter.knownRooms',         // rooms.js
  outbox: 'natter.outbox',            // outbox.js
};

export function get(key) {
  try { return localStorage.getItem(key); } catch { return null; }
}

export function set(key, value) {
  try { localStorage.setItem(key, value); } catch { /* keep working from memory */ }
}

export function remove(key) {
  try { localStorage.removeItem(key); } catch { /* ignore */ }
}

export function getJSON(key, fallback) {
  const raw = get(key);
  if (raw == null) return fallback;
  try { return JSON.parse(raw); } catch { return fallback; }
}

export function setJSON(key, value) {
  set(key, JSON.stringify(value));
}

/** A stored integer, or null when there is none (or it is not one). */
export function getInt(key) {
  const n = parseInt(get(key), 10);
  return Number.isSafeInteger(n) ? n : null;
}
