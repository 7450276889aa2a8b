/*
 * presence.js: who is in each open room (presence and presence_diff,
 * docs/protocol.md section 6) and who is typing there, shown in the header's
 * presence line, the member panel and the typing line.
 *
 * Owns: each room's members, viewer count and typers; #presence-line and
 * what is in it, #member-panel and its list, #typing-line, #room-meta's
 * data-typing.
 * May not touch: our own typing state (composer.js), messages, the socket.
 */

import * as connection from './connection.js';
import * as identity from './identity.js';
import * as rooms from './rooms.js';
import { $, el, paintAvatar } from './dom.js';

const TYPING_EXPIRE_MS = 6000;        // someone else's typing state without renewal is dropped
const SUMMARY_NAMES = 3;              // names spelled out in the header's member summary
const MEMBER_LIST_MAX = 500;          // the member panel lists at most this many

const roomMeta = $('room-meta');
const presenceLine = $('presence-line');
const toggle = $('presence-toggle');
const viewerCount = $('viewer-count');
const summaryEl = $('member-summary');
const panel = $('member-panel');
const panelTitle = $('member-panel-title');
const panelSub = $('member-panel-sub');
const panelClose = $('member-panel-close');
const memberList = $('member-list');
const typingLine = $('typing-line');

/**
 * name -> {presence, typers}: presence is {viewers, members: Map nick ->
 * connections (null: unknown), stale} or null before the first presence
 * frame; typers maps nick -> expiry timer, in the order they started typing.
 */
const here = new Map();
let panelOpen = false;
let typingQuietTimer = 0;

function entry(name) {
  let e = here.get(name);
  if (!e) {
    e = { presence: null, typers: new Map() };
    here.set(name, e);
  }
  return e;
}

/** The open room a frame is about, or null. */
function roomOf(f) {
  return typeof f.room === 'string' && rooms.has(f.room) ? f.room : null;
}

/** For the sidebar: {viewers, stale}, or null while unknown. */
export function viewersOf(name) {
  const e = here.get(name);
  return e && e.presence ? { viewers: e.presence.viewers, stale: e.presence.stale } : null;
}

/** Tabs per member as far as known; a member with an unknown count counts as one. */
function countedViewers(p) {
  let n = 0;
  for (const c of p.members.values()) n += c == null ? 1 : c;
  return n;
}

function byNick(a, b) {
  return a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0;
}

/** "2 tabs", "away" (in the grace period after its last tab went) or nothing. */
function memberNote(connections) {
  if (connections === 0) return 'away';
  if (connections != null && connections > 1) return `${connections} tabs`;
  return '';
}

/** "bob (2 tabs), carol and you" or "bob, carol, dave and 5 more". */
function memberSummary(p) {
  const me = identity.ownNick();
  const others = [...p.members.entries()].filter(([nick]) => nick !== me).sort(byNick);
  const withMe = p.members.has(me);
  if (!others.length) {
    if (!withMe) return 'nobody';
    const note = memberNote(p.members.get(me));
    return note && note !== 'away' ? `just you (${note})` : 'just you';
  }
  const labels = others.slice(0, SUMMARY_NAMES).map(([nick, c]) => {
    const note = memberNote(c);
    return note ? `${nick} (${note})` : nick;
  });
  const more = others.length - labels.length + (withMe ? 1 : 0);
  if (others.length > labels.length) return `${labels.join(', ')} and ${more} more`;
  if (withMe) return `${labels.join(', ')} and you`;
  if (labels.length === 1) return labels[0];
  return `${labels.slice(0, -1).join(', ')} and ${labels[labels.length - 1]}`;
}

function presenceChanged(name) {
  rooms.renderSidebar();
  if (name === rooms.current()) renderPresence();
}

/** The presence line and typing line of the room on screen. */
export function render() {
  renderPresence();
  renderTyping();
}

/** Header presence line and the member panel's list (kept current while closed), for the room on screen. */
function renderPresence() {
  const name = rooms.current();
  const p = name ? entry(name).presence : null;
  presenceLine.hidden = !p;
  if (!p) {
    viewerCount.textContent = '';
    delete viewerCount.dataset.count;
    summaryEl.textContent = '';
    memberList.replaceChildren();
    memberList.dataset.count = '0';
    closePanel();
    return;
  }
  const people = p.members.size;
  const peopleText = `${people} ${people === 1 ? 'person' : 'people'}`;
  const summary = memberSummary(p);
  presenceLine.dataset.stale = p.stale ? 'true' : 'false';
  viewerCount.textContent = `${p.viewers} viewing`;
  viewerCount.dataset.count = String(p.viewers);
  summaryEl.textContent = summary;
  toggle.title = `${peopleText}, ${p.viewers} open ${p.viewers === 1 ? 'tab' : 'tabs'}${p.stale ? ' (reconnecting)' : ''}`;
  toggle.setAttribute('aria-label',
    `${p.viewers} viewing #${name}: ${summary}.${p.stale ? ' Reconnecting.' : ''} Show everyone here`);

  panelTitle.textContent = `People in #${name}`;
  panelSub.textContent = `${peopleText} · ${p.viewers} viewing`;
  const me = identity.ownNick();
  const sorted = [...p.members.entries()].sort(byNick);
  const items = sorted.slice(0, MEMBER_LIST_MAX).map(([nick, c]) => {
    const avatar = el('span', { class: 'avatar avatar-xs', 'aria-hidden': 'true' });
    paintAvatar(avatar, nick);
    const note = memberNote(c);
    return el('li', {
      class: c === 0 ? 'member away' : 'member',
      'data-testid': 'member',
      'data-nick': nick,
      'data-connections': c == null ? null : String(c),
      'data-self': nick === me ? 'true' : null,
    },
    avatar,
    el('span', { class: 'member-nick' }, nick),
    nick === me ? el('span', { class: 'you-tag' }, 'you') : null,
    note ? el('span', { class: 'member-note' }, el('span', { class: 'sr-only' }, ', '), note) : null);
  });
  if (sorted.length > MEMBER_LIST_MAX) {
    items.push(el('li', { class: 'member-more' }, `and ${sorted.length - MEMBER_LIST_MAX} more`));
  }
  memberList.replaceChildren(...items);
  memberList.dataset.count = String(people);
}

function openPanel() {
  const name = rooms.current();
  if (!name || !entry(name).presence) return;
  panelOpen = true;
  panel.hidden = false;
  toggle.setAttribute('aria-expanded', 'true');
}

function closePanel({ focus = false } = {}) {
  if (!panelOpen) return;
  panelOpen = false;
  panel.hidden = true;
  toggle.setAttribute('aria-expanded', 'false');
  if (focus) toggle.focus();
}

/** Escape closes an open member panel; true when it did. */
export function escape() {
  if (!panelOpen) return false;
  const inside = panel.contains(document.activeElement) || document.activeElement === toggle;
  closePanel({ focus: inside });
  return true;
}

// --- Typing: theirs ---

function typingText(typers) {
  const nicks = [...typers.keys()];
  if (nicks.length === 0) return '';
  if (nicks.length === 1) return `${nicks[0]} is typing…`;
  if (nicks.length === 2) return `${nicks[0]} and ${nicks[1]} are typing…`;
  return `${nicks.length} people are typing…`;
}

function renderTyping() {
  const name = rooms.current();
  const typers = name ? entry(name).typers : null;
  const text = typers ? typingText(typers) : '';
  // Unchanged text is not touched, so renewals are not announced again.
  if (typingLine.textContent !== text) typingLine.textContent = text;
  typingLine.dataset.count = String(typers ? typers.size : 0);
  roomMeta.dataset.typing = text ? 'true' : 'false';
}

/** Switching rooms replaces the typing line; that is not news worth announcing. */
function quietTypingLine() {
  typingLine.setAttribute('aria-live', 'off');
  clearTimeout(typingQuietTimer);
  typingQuietTimer = setTimeout(() => typingLine.setAttribute('aria-live', 'polite'), 300);
}

function setTyper(name, nick, active) {
  const typers = entry(name).typers;
  const old = typers.get(nick);
  if (old === undefined && !active) return;
  clearTimeout(old);
  if (active) {
    // Map.set keeps a renewed nick in its place, so the line does not reshuffle.
    const timer = setTimeout(() => {
      if (typers.get(nick) !== timer) return;
      typers.delete(nick);
      if (name === rooms.current()) renderTyping();
    }, TYPING_EXPIRE_MS);
    typers.set(nick, timer);
  } else {
    typers.delete(nick);
  }
  if (name === rooms.current()) renderTyping();
}

function clearTypers(name) {
  const e = here.get(name);
  if (!e) return;
  for (const timer of e.typers.values()) clearTimeout(timer);
  e.typers.clear();
}

/** Their message is what they were typing. */
export function typerSpoke(name, nick) {
  if (rooms.has(name)) setTyper(name, nick, false);
}

// --- Frames ---

/** Full presence state of a room: on join, after a reconnect, after lag. */
function onPresence(f) {
  const name = roomOf(f);
  if (!name || !Array.isArray(f.members)) return;
  const members = new Map();
  for (const m of f.members) {
    if (!m || typeof m.nick !== 'string') continue;
    members.set(m.nick, Number.isSafeInteger(m.connections) && m.connections >= 0 ? m.connections : null);
  }
  const p = { viewers: 0, members, stale: false };
  p.viewers = Number.isSafeInteger(f.viewers) && f.viewers >= 0 ? f.viewers : countedViewers(p);
  const e = entry(name);
  e.presence = p;
  for (const nick of [...e.typers.keys()]) {
    if (!members.has(nick)) setTyper(name, nick, false);
  }
  presenceChanged(name);
}

/** Changes since the last presence frame; viewers is absolute, joins/leaves are nicks. */
function onPresenceDiff(f) {
  const name = roomOf(f);
  const p = name ? entry(name).presence : null;
  if (!p) return;
  for (const nick of Array.isArray(f.leaves) ? f.leaves : []) {
    if (typeof nick !== 'string') continue;
    p.members.delete(nick);
    setTyper(name, nick, false);
  }
  for (const nick of Array.isArray(f.joins) ? f.joins : []) {
    if (typeof nick === 'string') p.members.set(nick, null); // here, tab count unknown
  }
  if (Number.isSafeInteger(f.viewers) && f.viewers >= 0) p.viewers = f.viewers;
  // Diffs carry no tab counts. Keep ours only while they still add up to the
  // viewers total; otherwise someone opened or closed a tab and we cannot tell who.
  if (countedViewers(p) !== p.viewers) {
    for (const nick of p.members.keys()) p.members.set(nick, null);
  }
  presenceChanged(name);
}

function onTyping(f) {
  const name = roomOf(f);
  if (!name || typeof f.nick !== 'string' || f.nick === identity.ownNick()) return;
  setTyper(name, f.nick, f.active === true);
}

// --- What rooms and the socket tell us ---

/** Another room comes on screen. */
export function leaving() {
  closePanel();
  quietTypingLine();
}

export function removed(name, wasCurrent) {
  clearTypers(name);
  here.delete(name);
  if (wasCurrent) closePanel();
}

/** Typing states ride on the socket; who is here stays on screen, dimmed, until restated. */
export function socketDown() {
  for (const [name, e] of here) {
    clearTypers(name);
    if (e.presence) e.presence.stale = true;
  }
  render();
}

export function init() {
  connection.on('presence', onPresence);
  connection.on('presence_diff', onPresenceDiff);
  connection.on('typing', onTyping);

  toggle.addEventListener('click', () => {
    if (panelOpen) closePanel();
    else openPanel();
  });
  panelClose.addEventListener('click', () => closePanel({ focus: true }));
  document.addEventListener('pointerdown', (ev) => {
    if (panelOpen && !panel.contains(ev.target) && !toggle.contains(ev.target)) closePanel();
  });
  panel.addEventListener('focusout', (ev) => {
    // Tabbing away from the panel (not into the toggle) closes it.
    const to = ev.relatedTarget;
    if (to && !panel.contains(to) && to !== toggle) closePanel();
  });
}
