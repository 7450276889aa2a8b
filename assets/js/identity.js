/*
 * identity.js: who this page is: the nick (and the server's spelling of it
 * from welcome), the access token, whether the server refused either, and
 * the device prefix and counter that make every clientOffset unique.
 *
 * Owns: KEY.nick, KEY.token, KEY.device, KEY.counter.
 * May not touch: the DOM (dialogs.js asks the user), the socket.
 */

import * as storage from './storage.js';
import { KEY } from './storage.js';
import { checkNick } from './rules.js';

let nick = null;           // our nick (persisted)
let serverNick = null;     // the nick as the server echoed it in welcome
let token = null;          // access token (persisted)
let devicePrefix = null;   // random per-device part of every clientOffset
let sendCounter = 0;       // in-memory mirror, in case storage is unavailable
let needNick = false;      // the server rejected our nick
let needToken = false;     // waiting for the user to type an access token

export function load() {
  const stored = storage.get(KEY.nick);
  nick = stored && !checkNick(stored).error ? checkNick(stored).nick : null;
  token = storage.get(KEY.token) || null;

  devicePrefix = storage.get(KEY.device);
  if (!devicePrefix || !/^[a-z0-9]{4,32}$/.test(devicePrefix)) {
    devicePrefix = randomPrefix();
    storage.set(KEY.device, devicePrefix);
  }
  sendCounter = storage.getInt(KEY.counter) ?? 0;
}

export const getNick = () => nick;

/** A nick the user chose: kept, and the server's spelling of the old one is forgotten. */
export function setNick(value) {
  nick = value;
  storage.set(KEY.nick, nick);
  serverNick = null;
  needNick = false;
}

export function setServerNick(value) {
  if (typeof value === 'string') serverNick = value;
}

/** Our nick as the server knows it. */
export const ownNick = () => serverNick || nick;

export function isOwn(from, clientOffset) {
  if (clientOffset && devicePrefix && clientOffset.startsWith(`${devicePrefix}-`)) return true;
  return from === nick || (serverNick != null && from === serverNick);
}

export const needsNick = () => needNick;

/** The server did not accept the nick: wait for the user to choose another. */
export function refuseNick() {
  needNick = true;
}

export const getToken = () => token;
export const needsToken = () => needToken;

export function setToken(value) {
  token = value;
  storage.set(KEY.token, token);
  needToken = false;
}

/** The server refused the token: forget it and wait for the user. Returns whether there was one. */
export function refuseToken() {
  const had = !!token;
  token = null;
  storage.remove(KEY.token);
  needToken = true;
  return had;
}

export function newClientOffset() {
  // Re-read the counter so two tabs of the same device do not reuse a number.
  const stored = storage.getInt(KEY.counter);
  const n = Math.max(stored ?? 0, sendCounter) + 1;
  sendCounter = n;
  storage.set(KEY.counter, String(n));
  return `${devicePrefix}-${n}`;
}

function randomPrefix() {
  const bytes = new Uint8Array(8);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => (b % 36).toString(36)).join('');
}
