/*
 * rooms.js: the rooms this page has open: their order, which one is on
 * screen, joining and leaving, whether each is joined and synced on this
 * connection, and unread counts. Also the sidebar that shows them (room list,
 * badges, join form, the drawer on narrow screens), the header's title and
 * Leave button, and the document title.
 *
 * Owns: KEY.rooms, KEY.current, KEY.known; #room-list, #rooms-empty,
 * #no-room, #join-form, #drawer-open/-close/-badge, #drawer-backdrop,
 * #room-title, #room-meta (shown or not), #leave-room-btn.
 * May not touch: what is shown inside a room (messages.js), who is there
 * (presence.js) or the composer (composer.js). What they do when a room is
 * created, left, switched to or removed is wired in by main.js (wire()).
 */

import * as connection from './connection.js';
import * as offsets from './offsets.js';
import * as storage from './storage.js';
import { KEY } from './storage.js';
import { $, el, focusComposer, isNarrow, setFieldError, toast } from './dom.js';
import { DEFAULT_ROOMS, MAX_ROOMS, ROOM_RE, toRoomName } from './rules.js';

const MAX_KNOWN_ROOMS = 500;

const app = $('app');
const main = $('main');
const roomList = $('room-list');
const roomsEmpty = $('rooms-empty');
const noRoom = $('no-room');
const joinForm = $('join-form');
const joinInput = $('join-room-input');
const joinError = $('join-error');
const drawerOpenBtn = $('drawer-open');
const drawerCloseBtn = $('drawer-close');
const drawerBadge = $('drawer-badge');
const backdrop = $('drawer-backdrop');
const roomTitle = $('room-title');
const roomMeta = $('room-meta');
const leaveBtn = $('leave-room-btn');

/** name -> {fresh, joined, synced, unread, floor, and its sidebar elements} */
const rooms = new Map();
let order = [];            // open rooms in sidebar order (persisted)
let known = new Set();     // every room this device ever joined (persisted)
let shown = null;          // name of the room on screen
let unreadFloor = 0;       // ids at or below this were around before this session: not "unread"

const hooks = {
  created(/* name */) {},
  departing(/* name */) {},              // the user leaves it; it is still joined
  leaving(/* prev name or null */) {},   // another room comes on screen
  arrived(/* name, changed */) {},       // it is on screen now
  removed(/* name, wasCurrent */) {},
  changed(/* name on screen after a switch, or null */) {},
  viewers: (/* name */) => null,         // {viewers, stale} for the sidebar, or null
};

export function wire(given) {
  Object.assign(hooks, given);
}

export const current = () => shown;
export const has = (name) => rooms.has(name);
export const names = () => order.slice();
export const isJoined = (name) => !!(rooms.get(name) || {}).joined;
export const isSynced = (name) => !!(rooms.get(name) || {}).synced;

function createRoom(name, { fresh = false } = {}) {
  const badge = el('span', { class: 'badge', hidden: true });
  const badgeSr = el('span', { class: 'sr-only' });
  const viewersEl = el('span', { class: 'room-viewers', 'data-testid': 'room-viewers', 'aria-hidden': 'true', hidden: true });
  const viewersSr = el('span', { class: 'sr-only' });
  const navBtn = el('button', { type: 'button', class: 'room-btn', 'data-room': name, 'aria-current': 'false' },
    el('span', { class: 'room-hash', 'aria-hidden': 'true' }, '#'),
    el('span', { class: 'room-name' }, name),
    viewersEl, badge, badgeSr, viewersSr);
  const leave = el('button', {
    type: 'button', class: 'room-leave', 'data-leave-room': name,
    'aria-label': `Leave #${name}`, title: `Leave #${name}`,
  }, '×');
  const navItem = el('li', { class: 'room-item' }, navBtn, leave);

  const room = {
    navItem, navBtn, badge, badgeSr, viewersEl, viewersSr,
    fresh,                  // never joined before: the join goes out without serverOffset
    joined: false,
    synced: false,
    unread: 0,
    floor: 0,
  };

  navBtn.addEventListener('click', () => {
    switchRoom(name);
    closeDrawer();
    if (!isNarrow()) focusComposer();
  });
  leave.addEventListener('click', () => leaveRoom(name));

  roomList.appendChild(navItem);
  rooms.set(name, room);
  hooks.created(name);
  return room;
}

function saveRooms() {
  storage.setJSON(KEY.rooms, order);
  if (shown) storage.set(KEY.current, shown);
}

function rememberRoom(name) {
  if (known.has(name)) return;
  known.add(name);
  let list = [...known];
  if (list.length > MAX_KNOWN_ROOMS) {
    list = list.slice(-MAX_KNOWN_ROOMS);
    known = new Set(list);
  }
  storage.setJSON(KEY.known, list);
}

export function switchRoom(name) {
  const next = rooms.get(name);
  if (!next) return;
  const prev = shown;
  if (prev !== name) hooks.leaving(prev);
  shown = name;
  storage.set(KEY.current, name);
  hooks.arrived(name, prev !== name);
  next.unread = 0;
  renderSidebar();
  renderHeader();
  hooks.changed(name);
}

export function joinRoom(name) {
  if (rooms.has(name)) {
    switchRoom(name);
    return true;
  }
  if (order.length >= MAX_ROOMS) {
    setFieldError(joinInput, joinError, `You can have at most ${MAX_ROOMS} rooms open. Leave one first.`);
    return false;
  }
  const room = createRoom(name, { fresh: !known.has(name) });
  // Messages already stored when we join are not news.
  room.floor = offsets.get() || 0;
  rememberRoom(name);
  order.push(name);
  switchRoom(name);
  saveRooms();
  if (connection.isWelcomed()) sendJoin(name);
  return true;
}

function sendJoin(name) {
  const room = rooms.get(name);
  const frame = { type: 'join', room: name };
  // A room never seen before gets the newest messages; a known one only what we missed.
  const serverOffset = offsets.get();
  if (!room.fresh && serverOffset != null) frame.serverOffset = serverOffset;
  room.synced = false;
  connection.send(frame);
}

export function leaveRoom(name) {
  const room = rooms.get(name);
  if (!room) return;
  hooks.departing(name);
  if (connection.isWelcomed()) connection.send({ type: 'leave', room: name });
  const hadFocus = room.navItem.contains(document.activeElement);
  removeRoom(name);
  // The clicked button is gone; put keyboard focus somewhere sensible.
  if (hadFocus) (shown ? rooms.get(shown).navBtn : joinInput).focus();
  toast(`You left #${name}.`, { kind: 'info' });
}

function removeRoom(name) {
  const room = rooms.get(name);
  const idx = order.indexOf(name);
  room.navItem.remove();
  rooms.delete(name);
  if (idx >= 0) order.splice(idx, 1);
  const wasCurrent = shown === name;
  if (wasCurrent) shown = null;
  hooks.removed(name, wasCurrent);
  if (wasCurrent) {
    const fallback = order[Math.min(idx, order.length - 1)];
    if (fallback) switchRoom(fallback);
    else storage.remove(KEY.current);
  }
  saveRooms();
  renderSidebar();
  renderHeader();
  hooks.changed(null);
}

/** A message arrived in a room not on screen: count it if it is news. */
export function countUnread(name, id, own) {
  const room = rooms.get(name);
  if (!room || own || id <= Math.max(unreadFloor, room.floor)) return;
  room.unread++;
  renderSidebar();
}

export function renderSidebar() {
  let totalUnread = 0;
  for (const [name, room] of rooms) {
    const active = name === shown;
    room.navBtn.setAttribute('aria-current', active ? 'true' : 'false');
    const unread = active ? 0 : room.unread;
    totalUnread += unread;
    room.badge.hidden = unread === 0;
    room.badge.textContent = unread > 99 ? '99+' : String(unread);
    room.badge.setAttribute('aria-hidden', 'true');
    room.badgeSr.textContent = unread ? `, ${unread} unread` : '';
    room.navBtn.classList.toggle('has-unread', unread > 0);
    const presence = hooks.viewers(name);
    const viewers = presence ? presence.viewers : null;
    room.viewersEl.hidden = viewers == null;
    room.viewersEl.classList.toggle('stale', !!(presence && presence.stale));
    room.viewersEl.textContent = viewers == null ? '' : String(viewers);
    room.viewersSr.textContent = viewers == null ? '' : `, ${viewers} viewing`;
  }
  roomsEmpty.hidden = rooms.size > 0;
  noRoom.hidden = rooms.size > 0;
  drawerBadge.hidden = totalUnread === 0;
  document.title = `${totalUnread ? `(${totalUnread}) ` : ''}${shown ? `#${shown} · ` : ''}natter`;
}

export function renderHeader() {
  roomTitle.textContent = shown ? `#${shown}` : 'natter';
  roomMeta.hidden = !shown;
  leaveBtn.hidden = !shown;
  if (shown) leaveBtn.setAttribute('aria-label', `Leave #${shown}`);
}

// --- The connection's view of the rooms ---

/** After welcome: the rooms joined or left while the hello was on its way. */
export function welcomed(f, hello) {
  const floor = hello.serverOffset != null ? hello.serverOffset : f.serverOffset;
  unreadFloor = Number.isSafeInteger(floor) ? floor : 0;
  for (const name of order) {
    if (!hello.rooms.has(name)) sendJoin(name);
  }
  for (const name of hello.rooms) {
    if (!rooms.has(name)) connection.send({ type: 'leave', room: name });
  }
}

function onJoined(f) {
  if (typeof f.room !== 'string' || !ROOM_RE.test(f.room)) return;
  let room = rooms.get(f.room);
  if (!room) {
    // The server put us in a room we do not show; show it rather than hide messages.
    room = createRoom(f.room);
    order.push(f.room);
    saveRooms();
    if (!shown) switchRoom(f.room);
    renderSidebar();
  }
  room.joined = true;
  room.fresh = false;
  rememberRoom(f.room);
}

/** A synced frame: these rooms are caught up. Returns the ones still open. */
export function markSynced(list) {
  const synced = [];
  for (const name of list) {
    const room = rooms.get(name);
    if (!room) continue;
    room.synced = true;
    synced.push(name);
  }
  return synced;
}

export function socketDown() {
  for (const room of rooms.values()) {
    room.synced = false;
    room.joined = false;
  }
}

/** Another store: its unread counts and floors were counted in ids that mean nothing now. */
export function forgetStore() {
  for (const room of rooms.values()) {
    room.unread = 0;
    room.floor = 0;
  }
  renderSidebar();
}

// --- Drawer (narrow screens) and keyboard ---

function openDrawer() {
  app.classList.add('drawer-open');
  backdrop.hidden = false;
  drawerOpenBtn.setAttribute('aria-expanded', 'true');
  main.inert = true; // keep keyboard focus inside the open drawer
  (shown ? rooms.get(shown).navBtn : joinInput).focus();
}

export function closeDrawer() {
  if (!app.classList.contains('drawer-open')) return;
  app.classList.remove('drawer-open');
  backdrop.hidden = true;
  drawerOpenBtn.setAttribute('aria-expanded', 'false');
  main.inert = false;
}

/** Escape closes an open drawer; true when it did. */
export function escapeDrawer() {
  if (!app.classList.contains('drawer-open')) return false;
  closeDrawer();
  drawerOpenBtn.focus();
  return true;
}

/** Alt+Up / Alt+Down: the previous or next room; false when there is no other. */
export function step(delta) {
  if (order.length <= 1) return false;
  const i = order.indexOf(shown);
  switchRoom(order[(i + delta + order.length) % order.length]);
  return true;
}

export function onResize() {
  if (!isNarrow()) closeDrawer();
}

// --- Start-up ---

/** The rooms open on the last visit, each created (not joined: the hello does that). */
export function load() {
  const stored = storage.getJSON(KEY.known, []);
  known = new Set(Array.isArray(stored) ? stored.filter((r) => typeof r === 'string' && ROOM_RE.test(r)) : []);
  let list = storage.getJSON(KEY.rooms, null);
  if (!Array.isArray(list)) list = DEFAULT_ROOMS;
  order = [...new Set(list.filter((r) => typeof r === 'string' && ROOM_RE.test(r)))].slice(0, MAX_ROOMS);
  for (const name of order) createRoom(name, { fresh: !known.has(name) });
}

/** Puts the room of the last visit on screen. */
export function showFirst() {
  const stored = storage.get(KEY.current);
  const start = rooms.has(stored) ? stored : order[0];
  if (start) switchRoom(start);
}

export function init() {
  connection.on('joined', onJoined);
  // Only ever the answer to our own leave, and the room left the UI when the
  // user clicked. If they joined it again meanwhile, the room must stay.
  connection.on('left', () => {});

  joinForm.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const raw = joinInput.value;
    const name = toRoomName(raw);
    if (!name) {
      setFieldError(joinInput, joinError, raw.trim()
        ? 'Use 1–64 lowercase letters, digits, “-” or “_”, starting with a letter or digit.'
        : 'Type a room name first.');
      joinInput.focus();
      return;
    }
    if (joinRoom(name)) {
      joinInput.value = '';
      setFieldError(joinInput, joinError, '');
      closeDrawer();
      focusComposer();
    }
  });
  joinInput.addEventListener('input', () => setFieldError(joinInput, joinError, ''));
  leaveBtn.addEventListener('click', () => { if (shown) leaveRoom(shown); });
  drawerOpenBtn.addEventListener('click', openDrawer);
  drawerCloseBtn.addEventListener('click', () => { closeDrawer(); drawerOpenBtn.focus(); });
  backdrop.addEventListener('click', closeDrawer);
}
