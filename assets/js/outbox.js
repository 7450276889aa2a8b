/*
 * outbox.js: our sends that the server has not acknowledged yet, oldest
 * first, kept in localStorage with their original clientOffset. A reload, a
 * reconnect, a closed tab or a change of store neither loses nor doubles
 * one: each is sent again with the same clientOffset, and the server answers
 * one it has already stored as a duplicate (docs/protocol.md section 3).
 *
 * Owns: KEY.outbox, the retry timer, the answers to sends (ack, and errors
 * whose ref is a queued clientOffset).
 * May not touch: the composer, the message lists (it asks messages.js to show
 * a send as pending, sending, failed or stored).
 */

import * as connection from './connection.js';
import * as identity from './identity.js';
import * as messages from './messages.js';
import * as rooms from './rooms.js';
import * as storage from './storage.js';
import { KEY } from './storage.js';

// Errors on a send that mean "not stored, try again with the same clientOffset".
const RETRY_CODES = new Set(['internal', 'rate_limited']);

/** {clientOffset, room, text, nick, createdAt, sentOn, retryAt, tries}; oldest first (persisted). */
let entries = [];
let flushTimer = 0;

export const count = () => entries.length;

/** Sends to this room are still waiting. */
export const hasRoom = (name) => entries.some((e) => e.room === name);

function save() {
  storage.setJSON(KEY.outbox, entries.map((e) => ({
    clientOffset: e.clientOffset, room: e.room, text: e.text, nick: e.nick, createdAt: e.createdAt,
  })));
}

/** A new send from the composer: kept, and shown as pending. Call flush() to send it. */
export function enqueue(room, text) {
  const entry = {
    clientOffset: identity.newClientOffset(), room, text,
    nick: identity.ownNick(), createdAt: Date.now(), sentOn: 0, retryAt: 0, tries: 0,
  };
  entries.push(entry);
  save();
  messages.showPending(entry);
  return entry;
}

/** The send is stored (or can no longer be delivered): forget it. Returns it, or null. */
export function drop(clientOffset) {
  const i = entries.findIndex((e) => e.clientOffset === clientOffset);
  if (i < 0) return null;
  const [entry] = entries.splice(i, 1);
  save();
  connection.renderStatus();
  return entry;
}

/**
 * Sends every entry not yet sent on this socket, oldest first. An entry
 * waiting out a retry delay holds back the ones after it, so order is kept.
 */
export function flush() {
  clearTimeout(flushTimer);
  flushTimer = 0;
  if (!connection.isSynced()) return;
  const now = Date.now();
  for (const entry of entries) {
    if (entry.sentOn === connection.seq()) continue;
    if (entry.retryAt && entry.retryAt > now) {
      flushTimer = setTimeout(flush, entry.retryAt - now);
      break;
    }
    entry.nick = identity.ownNick();
    if (!connection.send({ type: 'send', room: entry.room, text: entry.text, clientOffset: entry.clientOffset })) break;
    entry.sentOn = connection.seq();
    entry.retryAt = 0;
    messages.setPendingStatus(entry, 'sending…');
  }
}

function retryDelay(tries) {
  return Math.min(3000 * 2 ** (tries - 1), 15000) + Math.random() * 500;
}

/** An error frame whose ref may be one of our sends; true when it was. */
export function sendFailed(ref, frame) {
  const entry = entries.find((e) => e.clientOffset === ref);
  if (!entry) return false;
  const reason = typeof frame.message === 'string' && frame.message ? frame.message : frame.code;
  if (RETRY_CODES.has(frame.code)) {
    entry.tries = (entry.tries || 0) + 1;
    entry.sentOn = 0;
    entry.retryAt = Date.now() + retryDelay(entry.tries);
    messages.setPendingStatus(entry, frame.code === 'rate_limited' ? 'slowing down, will retry…' : 'server trouble, will retry…');
    if (connection.isSynced()) flush();
    return true;
  }
  drop(entry.clientOffset);
  messages.markFailed(entry, reason);
  return true;
}

function onAck(f) {
  if (typeof f.clientOffset !== 'string') return;
  if (Number.isFinite(f.ts)) connection.noteServerTime(f.ts);
  const entry = drop(f.clientOffset);
  if (!entry || !Number.isSafeInteger(f.id)) return;
  if (!rooms.has(entry.room)) return;
  messages.confirm(entry.room, {
    id: f.id, room: entry.room, nick: entry.nick, text: entry.text,
    ts: Number.isFinite(f.ts) ? f.ts : Date.now(), clientOffset: entry.clientOffset,
  });
}

/** Queued sends cannot be delivered once we are out of the room. */
export function roomRemoved(name) {
  const before = entries.length;
  entries = entries.filter((e) => e.room !== name);
  if (entries.length !== before) save();
}

export function socketDown() {
  clearTimeout(flushTimer);
  for (const entry of entries) messages.setPendingStatus(entry, 'waiting for connection…');
}

/** Unacknowledged sends from an earlier visit come back as pending (rooms are loaded first). */
export function load() {
  const stored = storage.getJSON(KEY.outbox, []);
  entries = (Array.isArray(stored) ? stored : []).filter((e) => e && typeof e.clientOffset === 'string' &&
    typeof e.text === 'string' && typeof e.room === 'string' && rooms.has(e.room))
    .map((e) => ({
      clientOffset: e.clientOffset, room: e.room, text: e.text,
      nick: typeof e.nick === 'string' ? e.nick : (identity.getNick() || ''),
      createdAt: Number.isFinite(e.createdAt) ? e.createdAt : Date.now(), sentOn: 0, retryAt: 0, tries: 0,
    }));
  for (const entry of entries) messages.showPending(entry);
  save();
}

export function init() {
  connection.on('ack', onAck);
}
