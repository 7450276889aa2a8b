/*
 * messages.js: the messages of each open room: stored ones in id order with
 * no duplicate, our pending sends after them, history paging towards the
 * beginning, replay bookkeeping (serverOffset moves only once the hello is
 * synced), and scrolling (following new messages, the "new messages" pill).
 *
 * Owns: one log per room (the role="log" elements in #logs; the one on
 * screen is #message-list), #new-msgs-pill, the history requests in flight.
 * May not touch: the outbox's list (it is told when a send is seen stored,
 * through wire({ confirmed })), the composer, presence.
 */

import * as connection from './connection.js';
import * as identity from './identity.js';
import * as offsets from './offsets.js';
import * as presence from './presence.js';
import * as rooms from './rooms.js';
import { $, el, focusComposer, toast } from './dom.js';
import { isMessage } from './rules.js';
import { buildMessageEl, decorate, setMessageTime } from './views.js';

const HISTORY_PAGE = 50;
const STICK_PX = 48;                  // "at the bottom" tolerance (zoom gives fractional scroll values)
const TOP_PX = 150;                   // ask for older history a little before the very top
const HISTORY_ERROR_PAUSE_MS = 5000;

const logsEl = $('logs');
const noRoom = $('no-room');
const pill = $('new-msgs-pill');

/** name -> Log (see created) */
const logs = new Map();
let historySeq = 0;
const historyRefs = new Map();   // ref -> room name

const hooks = {
  confirmed(/* clientOffset */) {},   // a send of ours is stored
};

export function wire(given) {
  Object.assign(hooks, given);
}

/** A room was opened: its log, empty until the server fills it. */
export function created(name) {
  const top = el('div', { class: 'log-top' });
  const list = el('ol', { class: 'msgs' });
  const log = el('div', {
    class: 'log', role: 'log', 'aria-live': 'polite', 'aria-label': `Messages in #${name}`,
    tabindex: '0', 'data-log-room': name, hidden: true,
  }, top, list);
  const state = {
    log, top, list,
    records: [],            // confirmed messages, ascending id: {id, nick, ts, text, clientOffset, el}
    ids: new Set(),         // defensive dedupe
    pending: new Map(),     // clientOffset -> {rec, el, status}; always rendered after the confirmed ones
    hasMore: null,          // null: unknown yet; false: the beginning is loaded
    historyRef: null,
    historyPausedUntil: 0,
    liveTimer: 0,
    stick: true,            // view follows new messages
    savedTop: 0,
    newBelow: false,
  };
  log.addEventListener('scroll', () => onLogScroll(name), { passive: true });
  logsEl.insertBefore(log, noRoom);
  logs.set(name, state);
  renderTop(name);
}

export function removed(name) {
  const state = logs.get(name);
  if (!state) return;
  state.log.remove();
  logs.delete(name);
}

/** Another room comes on screen: this one keeps its scroll position for later. */
export function leaving(prev) {
  const state = prev ? logs.get(prev) : null;
  if (!state) return;
  state.savedTop = state.log.scrollTop;
  state.log.hidden = true;
  state.log.removeAttribute('id');
  state.log.removeAttribute('data-testid');
}

export function arrived(name) {
  const state = logs.get(name);
  state.log.hidden = false;
  state.log.id = 'message-list';
  state.log.setAttribute('data-testid', 'message-list');
  if (state.stick) scrollToBottom(state);
  else state.log.scrollTop = state.savedTop;
}

// --- Ordered insertion and pending sends ---

function redecoratePending(state) {
  let prev = state.records.length ? state.records[state.records.length - 1] : null;
  for (const p of state.pending.values()) {
    decorate(p.el, p.rec, prev);
    prev = p.rec;
  }
}

function firstPendingEl(state) {
  for (const p of state.pending.values()) return p.el;
  return null;
}

/** First index whose id is >= id (records are ascending). */
function lowerBound(records, id) {
  let lo = 0;
  let hi = records.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (records[mid].id < id) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/**
 * Puts a stored message into its room at its id position. Returns the element,
 * or null when the id is already shown. Our own pending copy, if any, is upgraded
 * in place rather than duplicated.
 */
function insertConfirmed(state, msg) {
  if (state.ids.has(msg.id)) {
    // Already shown (e.g. from a replay): a leftover pending copy must not linger.
    if (msg.clientOffset && state.pending.has(msg.clientOffset)) discardPending(state, msg.clientOffset);
    return null;
  }
  state.ids.add(msg.id);

  let li;
  const pend = msg.clientOffset ? state.pending.get(msg.clientOffset) : null;
  if (pend) {
    state.pending.delete(msg.clientOffset);
    li = pend.el;
    li.classList.remove('pending', 'failed');
    li.removeAttribute('aria-busy');
    pend.status.remove();
    li.dataset.id = String(msg.id);
    setMessageTime(li, msg.ts);
    hooks.confirmed(msg.clientOffset);
  } else {
    li = buildMessageEl(msg, identity.isOwn(msg.nick, msg.clientOffset));
  }

  const rec = { id: msg.id, nick: msg.nick, ts: msg.ts, text: msg.text, clientOffset: msg.clientOffset || null, el: li };
  const records = state.records;
  const idx = records.length && records[records.length - 1].id > msg.id ? lowerBound(records, msg.id) : records.length;
  records.splice(idx, 0, rec);
  const next = records[idx + 1];
  state.list.insertBefore(li, next ? next.el : firstPendingEl(state));
  decorate(li, rec, records[idx - 1] || null);
  if (next) decorate(next.el, next, rec);
  else redecoratePending(state);
  return li;
}

/** The ack of one of our sends: it is stored with this id and time. */
export function confirm(name, msg) {
  const state = logs.get(name);
  if (state) insertConfirmed(state, msg);
}

/** One of our sends, shown greyed out until it is stored. */
export function showPending(entry) {
  const state = logs.get(entry.room);
  const li = buildMessageEl({ nick: entry.nick, text: entry.text, ts: entry.createdAt, clientOffset: entry.clientOffset },
    identity.isOwn(entry.nick, entry.clientOffset));
  li.classList.add('pending');
  li.setAttribute('aria-busy', 'true');
  // The outbox switches this to "sending…" once the frame is really on the wire.
  const status = el('div', { class: 'msg-status' }, connection.isSynced() ? 'waiting to send…' : 'waiting for connection…');
  li.querySelector('.msg-body').appendChild(status);
  const rec = { nick: entry.nick, ts: entry.createdAt, failed: false };
  state.pending.set(entry.clientOffset, { rec, el: li, status });
  state.list.appendChild(li);
  redecoratePending(state);
}

function discardPending(state, clientOffset) {
  const pend = state.pending.get(clientOffset);
  if (!pend) return;
  pend.el.remove();
  state.pending.delete(clientOffset);
  redecoratePending(state);
}

export function setPendingStatus(entry, text) {
  const state = logs.get(entry.room);
  const pend = state && state.pending.get(entry.clientOffset);
  if (pend && !pend.rec.failed) pend.status.textContent = text;
}

export function markFailed(entry, reason) {
  const state = logs.get(entry.room);
  const pend = state && state.pending.get(entry.clientOffset);
  if (!pend) return;
  pend.rec.failed = true;
  pend.el.classList.remove('pending');
  pend.el.classList.add('failed');
  pend.el.removeAttribute('aria-busy');
  const dismiss = el('button', { type: 'button', class: 'link-btn' }, 'Dismiss');
  dismiss.addEventListener('click', () => {
    discardPending(state, entry.clientOffset);
    renderTop(entry.room);
    focusComposer();
  });
  pend.status.replaceChildren(el('span', null, `Not sent: ${reason}`), dismiss);
  pend.status.setAttribute('role', 'alert');
  redecoratePending(state);
}

/** Top-of-log line: load-more button, loading note, or "beginning of #room". */
export function renderTop(name) {
  const state = logs.get(name);
  if (!state) return;
  const top = state.top;
  if (state.hasMore === false) {
    const empty = state.records.length === 0 && state.pending.size === 0;
    top.replaceChildren(el('div', { class: 'beginning' },
      el('strong', null, `#${name}`),
      empty ? 'No messages yet. Say hello!' : `This is the beginning of #${name}.`));
  } else if (state.historyRef) {
    top.replaceChildren(el('span', null, 'Loading older messages…'));
  } else if (state.records.length && rooms.isSynced(name)) {
    const more = el('button', { type: 'button', class: 'link-btn' }, 'Load older messages');
    more.addEventListener('click', () => requestHistory(name));
    top.replaceChildren(more);
  } else {
    top.replaceChildren();
  }
}

// --- Scrolling: stick to bottom, "new messages" pill, history paging ---

function distanceFromBottom(log) {
  return log.scrollHeight - log.scrollTop - log.clientHeight;
}

function scrollToBottom(state) {
  state.log.scrollTop = state.log.scrollHeight;
  state.stick = true;
  state.newBelow = false;
}

/** After a resize: a room that follows new messages stays at the bottom. */
export function keepAtBottom() {
  const state = logs.get(rooms.current());
  if (state && state.stick) scrollToBottom(state);
}

function onLogScroll(name) {
  if (name !== rooms.current()) return;
  const state = logs.get(name);
  state.stick = distanceFromBottom(state.log) <= STICK_PX;
  if (state.stick && state.newBelow) {
    state.newBelow = false;
    renderPill();
  }
  if (state.log.scrollTop < TOP_PX) requestHistory(name);
}

export function renderPill() {
  const state = logs.get(rooms.current());
  pill.hidden = !(state && state.newBelow);
}

/**
 * After new content arrives at the bottom of a room. `jump`: the user just sent
 * it, so show it even if they were scrolled up. `quiet`: no pill for it (our own).
 */
export function afterAppend(name, { jump = false, quiet = false } = {}) {
  if (name !== rooms.current()) return;
  const state = logs.get(name);
  if (state.stick || jump) scrollToBottom(state);
  else if (!quiet) state.newBelow = true;
  renderPill();
}

function requestHistory(name) {
  const state = logs.get(name);
  if (!connection.isWelcomed() || !rooms.isSynced(name) || state.historyRef || state.hasMore === false) return;
  if (Date.now() < state.historyPausedUntil) return;
  const ref = `h${++historySeq}`;
  const frame = { type: 'history', room: name };
  if (state.records.length) frame.before = state.records[0].id;
  frame.limit = HISTORY_PAGE;
  frame.ref = ref;
  if (!connection.send(frame)) return;
  state.historyRef = ref;
  historyRefs.set(ref, name);
  renderTop(name);
}

/** Keeps loading older pages while the room on screen does not fill its view. */
export function fillHistory(name) {
  const state = name ? logs.get(name) : null;
  if (!state || name !== rooms.current() || state.hasMore === false) return;
  const log = state.log;
  if (log.scrollHeight - log.clientHeight <= TOP_PX || log.scrollTop < TOP_PX) requestHistory(name);
}

/** An error answering one of our history requests; true when `ref` was one. */
export function historyFailed(ref, message) {
  const name = historyRefs.get(ref);
  if (name === undefined) return false;
  historyRefs.delete(ref);
  const state = logs.get(name);
  if (state && state.historyRef === ref) {
    state.historyRef = null;
    state.historyPausedUntil = Date.now() + HISTORY_ERROR_PAUSE_MS;
    renderTop(name);
  }
  toast(`Could not load older messages: ${message}`);
  return true;
}

// --- Frames ---

function onMessage(f) {
  if (!isMessage(f)) return;
  // Before the hello's `synced`, rooms are replayed one after another, so
  // a newer id of one room can come before an older one of the next: the
  // offset moves only with `synced`, then with every live message (the
  // server keeps one id order after that).
  if (connection.isSynced()) offsets.bump(f.id);
  const name = typeof f.room === 'string' ? f.room : null;
  const state = name ? logs.get(name) : null;
  if (!state) {
    if (f.clientOffset) hooks.confirmed(f.clientOffset);
    return;
  }
  presence.typerSpoke(name, f.nick);
  const own = identity.isOwn(f.nick, f.clientOffset);
  const li = insertConfirmed(state, f);
  if (f.clientOffset) hooks.confirmed(f.clientOffset);
  if (!li) return;
  const isLast = state.records[state.records.length - 1].el === li;
  if (name !== rooms.current()) rooms.countUnread(name, f.id, own);
  else if (isLast) afterAppend(name, { quiet: own });
  if (state.hasMore === false && state.records.length === 1) renderTop(name);
}

function onHistory(f) {
  const name = historyRefs.get(f.ref);
  if (name === undefined) return;
  historyRefs.delete(f.ref);
  const state = logs.get(name);
  if (!state || state.historyRef !== f.ref) return;
  state.historyRef = null;

  const visible = name === rooms.current();
  const log = state.log;
  const anchor = visible && !state.stick ? { height: log.scrollHeight, top: log.scrollTop } : null;
  // Old messages are not news: keep screen readers from reading a whole page of them.
  log.setAttribute('aria-live', 'off');
  clearTimeout(state.liveTimer);
  state.liveTimer = setTimeout(() => log.setAttribute('aria-live', 'polite'), 300);
  // History only ever shows older messages: it never moves serverOffset.
  for (const m of Array.isArray(f.messages) ? f.messages : []) {
    if (isMessage(m)) insertConfirmed(state, m);
  }
  state.hasMore = f.hasMore === true;
  renderTop(name);
  if (visible) {
    if (anchor) log.scrollTop = anchor.top + (log.scrollHeight - anchor.height);
    else scrollToBottom(state);
    fillHistory(name);
  }
}

/** History requests ride on the socket; their answers will not come. */
export function socketDown() {
  historyRefs.clear();
  for (const [name, state] of logs) {
    state.historyRef = null;
    renderTop(name);
  }
}

/**
 * Another store: every stored message shown came from the old one (its ids
 * may now name other messages). They go; our pending sends stay, to be
 * resent. The server fills the logs again as on a first visit.
 */
export function forgetStore() {
  historyRefs.clear();
  for (const [name, state] of logs) {
    for (const rec of state.records) rec.el.remove();
    state.records = [];
    state.ids.clear();
    state.hasMore = null;
    state.historyRef = null;
    state.historyPausedUntil = 0;
    state.stick = true;
    state.savedTop = 0;
    state.newBelow = false;
    redecoratePending(state);
    renderTop(name);
  }
  renderPill();
}

export function init() {
  connection.on('message', onMessage);
  connection.on('history', onHistory);
  pill.addEventListener('click', () => {
    const state = logs.get(rooms.current());
    if (state) scrollToBottom(state);
    renderPill();
    focusComposer();
  });
}
