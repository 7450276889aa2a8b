/*
 * composer.js: the message input: what is typed in each room (the text parked
 * while another room is on screen, and the server-side draft of it,
 * docs/protocol.md section 7), our own typing state, the character count,
 * and turning Enter into a send.
 *
 * Owns: #composer, #message-input, #send-btn, #char-count; each room's draft
 * state; our typing state and the refs of those best-effort frames.
 * May not touch: the outbox's list (it hands a send to outbox.js), the
 * message lists (messages.js shows and scrolls), someone else's typing
 * (presence.js).
 */

import * as connection from './connection.js';
import * as identity from './identity.js';
import * as messages from './messages.js';
import * as outbox from './outbox.js';
import * as rooms from './rooms.js';
import { $, toast } from './dom.js';
import { charCount, isBlank } from './rules.js';

const TYPING_RENEW_MS = 2000;         // while typing, "typing: true" goes out at most this often
const TYPING_IDLE_MS = 3000;          // no keystroke for this long ends our typing state
const DRAFT_DEBOUNCE_MS = 300;        // a draft goes out this long after the last keystroke...
const DRAFT_MAX_WAIT_MS = 1000;       // ...or at least this often during continuous typing
// Refs on best-effort frames: their errors (not_joined right after a leave, say) stay silent.
const TYPING_REF = 'typing';
const DRAFT_REF = 'draft';

const form = $('composer');
const input = $('message-input');
const sendBtn = $('send-btn');
const counter = $('char-count');

/**
 * name -> {text, known, dirty, editAt}: the composer text while another room
 * is on screen; the draft the server holds, as far as we know; local edits
 * the server has not got yet; our clock at the last local edit.
 */
const drafts = new Map();
let draftRoom = null;      // the room whose draft is waiting for its debounce
let draftTimer = 0;
let draftSince = 0;        // first keystroke not yet sent as a draft
let draftNick = null;      // the nick the local draft state belongs to
const typingOut = { room: null, active: false, lastSentAt: 0, idleTimer: 0 };

function draftOf(name) {
  let d = drafts.get(name);
  if (!d) {
    d = { text: '', known: '', dirty: false, editAt: 0 };
    drafts.set(name, d);
  }
  return d;
}

/** Errors on these refs are expected now and then, and not worth showing. */
export const ownsRef = (ref) => ref === TYPING_REF || ref === DRAFT_REF;

export function update() {
  const name = rooms.current();
  input.disabled = !name;
  input.placeholder = name ? `Message #${name}` : 'Join a room to chat';
  // Grow with the text, up to the CSS max-height.
  input.style.height = 'auto';
  input.style.height = `${input.scrollHeight}px`;

  const max = connection.maxTextChars();
  const len = charCount(input.value);
  const near = max > 0 && len >= Math.floor(max * 0.8);
  counter.hidden = !near;
  counter.textContent = near ? `${len} / ${max}` : '';
  counter.classList.toggle('over', len > max);
  const unusable = !name || isBlank(input.value) || len > max;
  sendBtn.setAttribute('aria-disabled', unusable ? 'true' : 'false');
}

function textOf(name) {
  return name === rooms.current() ? input.value : draftOf(name).text;
}

/** Puts text in the composer with the caret at the end (no input event: nothing is re-sent). */
function setInputText(text) {
  input.value = text || '';
  const end = input.value.length;
  try { input.setSelectionRange(end, end); } catch { /* not focusable right now */ }
  update();
}

function setTextOf(name, text) {
  if (name === rooms.current()) setInputText(text);
  else draftOf(name).text = text;
}

// --- Typing: ours ---

/** After a keystroke in the composer of `name`. */
function noteTyping(name) {
  if (isBlank(input.value)) {
    stopTyping();
    return;
  }
  if (typingOut.active && typingOut.room !== name) stopTyping();
  const now = Date.now();
  if ((!typingOut.active || now - typingOut.lastSentAt >= TYPING_RENEW_MS) && rooms.isJoined(name) &&
      connection.send({ type: 'typing', room: name, active: true, ref: TYPING_REF })) {
    typingOut.active = true;
    typingOut.room = name;
    typingOut.lastSentAt = now;
  }
  clearTimeout(typingOut.idleTimer);
  typingOut.idleTimer = setTimeout(stopTyping, TYPING_IDLE_MS);
}

/** Ends our typing state: input emptied, message sent, room switched, or idle. */
export function stopTyping() {
  if (typingOut.active && typingOut.room && rooms.has(typingOut.room)) {
    connection.send({ type: 'typing', room: typingOut.room, active: false, ref: TYPING_REF });
  }
  resetTypingOut();
}

function resetTypingOut() {
  clearTimeout(typingOut.idleTimer);
  typingOut.idleTimer = 0;
  typingOut.active = false;
  typingOut.room = null;
  typingOut.lastSentAt = 0;
}

// --- Drafts ---

/** After a keystroke: the draft goes out 300 ms after the last one, and at least every second. */
function scheduleDraft(name) {
  const now = Date.now();
  const d = draftOf(name);
  d.dirty = true;
  d.editAt = now;
  if (draftRoom && draftRoom !== name) flushDraft();
  draftRoom = name;
  if (!draftSince) draftSince = now;
  clearTimeout(draftTimer);
  const wait = Math.max(0, Math.min(DRAFT_DEBOUNCE_MS, draftSince + DRAFT_MAX_WAIT_MS - now));
  draftTimer = setTimeout(flushDraft, wait);
}

function cancelDraftTimer() {
  clearTimeout(draftTimer);
  draftTimer = 0;
  draftSince = 0;
  draftRoom = null;
}

/** Sends the waiting draft now. */
export function flushDraft() {
  const name = draftRoom;
  cancelDraftTimer();
  if (name) pushDraft(name);
}

/** Tells the server the room's composer text, if it changed. Unsendable: stays dirty, retried on sync. */
export function pushDraft(name) {
  const d = drafts.get(name);
  if (!d || !d.dirty || !rooms.has(name)) return;
  const text = textOf(name);
  if (text === d.known) {
    d.dirty = false;
    return;
  }
  // Over the limit the server answers too_long; the composer already shows the count in red.
  if (charCount(text) > connection.maxTextChars()) return;
  // Before synced, the stored draft may still be on its way and would look newer.
  if (!rooms.isJoined(name) || !rooms.isSynced(name)) return;
  if (!connection.send({ type: 'draft', room: name, text, ref: DRAFT_REF })) return;
  d.known = text;
  d.dirty = false;
}

/** Nothing known of the server's drafts applies any more: what the composers hold becomes the draft. */
function forgetKnownDrafts() {
  for (const name of rooms.names()) {
    const d = draftOf(name);
    d.known = '';
    d.dirty = textOf(name) !== '';
  }
}

/**
 * Our draft for a room: the stored one on hello/join (before synced), or an
 * edit from another tab of ours (after synced).
 */
function onDraft(f) {
  const name = typeof f.room === 'string' && rooms.has(f.room) ? f.room : null;
  if (!name || typeof f.text !== 'string') return;
  const text = f.text;
  const updatedAt = Number.isFinite(f.updatedAt) ? f.updatedAt : null;
  const live = rooms.isSynced(name);
  if (live && updatedAt != null) connection.noteServerTime(updatedAt);
  // A stored draft while sends to this room are still queued: those sends were
  // typed from it, and delivering them clears it on the server.
  if (!live && outbox.hasRoom(name)) return;

  const d = draftOf(name);
  const prevKnown = d.known;
  const local = textOf(name);
  if (d.dirty) {
    // Edits made here that the server has not seen yet win; they go out next.
    d.known = text;
    return;
  }
  if (text === '') {
    // Sent or cleared elsewhere. Only wipe what we still show of the old draft.
    d.known = '';
    if (local === prevKnown) setTextOf(name, '');
    else if (local !== '') {
      d.dirty = true;
      pushDraft(name);
    }
    return;
  }
  const editingHere = name === rooms.current() && document.activeElement === input;
  if (editingHere && updatedAt != null && d.editAt + connection.serverSkew() > updatedAt) {
    return; // typed here after that draft was saved: the server already has our newer text
  }
  d.known = text;
  if (local !== text) setTextOf(name, text);
}

// --- Sending ---

function submit() {
  const name = rooms.current();
  const text = input.value;
  if (!name || isBlank(text)) return;
  const max = connection.maxTextChars();
  if (charCount(text) > max) {
    counter.hidden = false;
    toast(`That message is too long: at most ${max} characters.`);
    return;
  }
  outbox.enqueue(name, text);
  messages.afterAppend(name, { jump: true });
  messages.renderTop(name);
  input.value = '';
  update();
  // The server clears the draft when the message arrives (and tells our other tabs).
  if (draftRoom === name) cancelDraftTimer();
  const d = draftOf(name);
  d.text = '';
  d.known = '';
  d.dirty = false;
  d.editAt = Date.now();
  stopTyping();
  outbox.flush();
  connection.renderStatus();
}

function onInput() {
  update();
  const name = rooms.current();
  if (!name) return;
  noteTyping(name);
  scheduleDraft(name);
  if (input.value === '') flushDraft(); // cleared: say so at once
}

function onKey(ev) {
  if (ev.key !== 'Enter' || ev.shiftKey || ev.isComposing || ev.keyCode === 229) return;
  ev.preventDefault();
  submit();
}

// --- What rooms, the socket and the store tell us ---

/** Another room comes on screen: this one's text is parked, its draft sent. */
export function leaving(prev) {
  if (prev) {
    draftOf(prev).text = input.value;
    if (draftRoom === prev) flushDraft();
  }
  stopTyping();
}

export function arrived(name, changed) {
  if (changed) setInputText(draftOf(name).text);
}

/** The user leaves the room: what was typed stays on the server as its draft, for a later join. */
export function departing(name) {
  if (draftRoom === name) flushDraft();
}

export function removed(name, wasCurrent) {
  // The server ends our typing state in a room we leave.
  if (typingOut.room === name) resetTypingOut();
  if (draftRoom === name) cancelDraftTimer();
  drafts.delete(name);
  if (wasCurrent) setInputText('');
}

/** Typing states ride on the socket: the server ends ours. */
export function socketDown() {
  resetTypingOut();
}

/** After welcome: drafts are kept per nick, so after a nick change nothing we knew applies. */
export function welcomed() {
  const nick = identity.ownNick();
  if (draftNick != null && draftNick !== nick) forgetKnownDrafts();
  draftNick = nick;
}

/** Another store: its drafts are not the ones we knew. */
export function forgetStore() {
  forgetKnownDrafts();
}

/** The page is going away (or into the back/forward cache). */
export function pageHidden() {
  flushDraft();
  stopTyping();
}

export function init() {
  connection.on('draft', onDraft);
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    submit();
    input.focus();
  });
  input.addEventListener('keydown', onKey);
  input.addEventListener('input', onInput);
}
