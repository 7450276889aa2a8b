/*
 * connection.js: the WebSocket to /ws and what rides on it: hello and
 * welcome, reconnecting with jittered backoff, the application-level ping that
 * finds a dead link, the connection status in the header, and handing each
 * incoming frame to the one handler registered for its type. Frames of a type
 * nobody registered (version 2 adds some the page does not handle yet) are
 * ignored without error.
 *
 * Owns: the socket and its timers; #conn-group, #conn-status, #conn-text,
 * #conn-action, #conn-announce; what the last hello said; the session's
 * limits and id from welcome; an estimate of the server's clock from this
 * connection.
 * May not touch: rooms, messages, the outbox, drafts or dialogs. What they do
 * when the socket goes, which rooms a hello names, how many sends are queued
 * and what the status button does are wired in by main.js (wire()).
 */

import * as identity from './identity.js';
import * as offsets from './offsets.js';
import { $ } from './dom.js';
import { MAX_ROOMS } from './rules.js';

// The hello asks for version 2: new frame types it does not know are ignored.
const PROTOCOL_VERSION = 2;
const PING_EVERY_MS = 25000;          // browsers cannot see WebSocket pings; the server drops silent sockets at 60 s
const WELCOME_TIMEOUT_MS = 12000;     // a socket that never says welcome is as good as dead
const BACKOFF_BASE_MS = 500;
const BACKOFF_CAP_MS = 20000;

const group = $('conn-group');
const status = $('conn-status');
const statusText = $('conn-text');
const statusAction = $('conn-action');
const announce = $('conn-announce');

let ws = null;
let conn = 'connecting';       // connected | connecting | reconnecting | offline
let connSeq = 0;               // increases per socket; outbox entries remember where they were sent
let welcomed = false;
let helloSynced = false;       // the synced answering our hello has arrived
let lastHello = { rooms: new Set(), serverOffset: null };
let sessionId = null;
let attempt = 0;
let retryAt = 0;
let retryTimer = 0;
let countdownTimer = 0;
let welcomeTimer = 0;
let pingTimer = 0;
let pingSentAt = 0;
let lastFrameAt = 0;
let skew = null;               // estimate of (server clock - our clock), in ms, from this connection
const limits = { maxTextChars: 4000, maxFrameBytes: 65536, sendsPer10s: 20 };

const handlers = new Map([['pong', () => { /* liveness only: lastFrameAt was updated on receipt */ }]]);
const hooks = {
  rooms: () => [],     // the rooms a hello asks for
  queued: () => 0,     // sends waiting for an ack, shown in the status
  down() {},           // the socket is gone: what rode on it is over
  action() {},         // the status button was clicked
};

export function wire(given) {
  Object.assign(hooks, given);
}

/** The handler for frames of `type` (one per type). */
export function on(type, handler) {
  handlers.set(type, handler);
}

export const isWelcomed = () => welcomed;
export const isSynced = () => helloSynced;
export const seq = () => connSeq;
export const maxTextChars = () => limits.maxTextChars;
/** What the hello of this connection said: {rooms: Set, serverOffset}. */
export const hello = () => lastHello;

export function send(frame) {
  if (!ws || ws.readyState !== WebSocket.OPEN) return false;
  try {
    ws.send(JSON.stringify(frame));
    return true;
  } catch (err) {
    console.error('natter: send failed', err);
    return false;
  }
}

function wsUrl() {
  return `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`;
}

export function connect() {
  clearTimeout(retryTimer);
  retryTimer = 0;
  if (ws || !identity.getNick() || identity.needsToken() || identity.needsNick()) {
    renderStatus();
    return;
  }
  let socket;
  try {
    socket = new WebSocket(wsUrl());
  } catch {
    // e.g. the page was opened from a file: there is no host to talk to.
    scheduleReconnect();
    return;
  }
  ws = socket;
  connSeq++;
  welcomed = false;
  helloSynced = false;
  setConn('connecting');
  welcomeTimer = setTimeout(() => {
    if (ws === socket && !welcomed) dropSocket(socket);
  }, WELCOME_TIMEOUT_MS);

  socket.onopen = () => {
    if (ws !== socket) return;
    lastFrameAt = Date.now();
    sendHello();
  };
  socket.onmessage = (ev) => {
    if (ws !== socket) return;
    lastFrameAt = Date.now();
    handleFrameText(ev.data);
  };
  // An error is always followed by close; dropping at the first sign is enough.
  socket.onerror = () => { if (ws === socket) dropSocket(socket); };
  socket.onclose = () => { if (ws === socket) dropSocket(socket); };
}

function sendHello() {
  const serverOffset = offsets.catchUp();
  const rooms = hooks.rooms().slice(0, MAX_ROOMS);
  const frame = { type: 'hello', version: PROTOCOL_VERSION, nick: identity.getNick(), rooms };
  if (serverOffset != null) frame.serverOffset = serverOffset;
  const token = identity.getToken();
  if (token) frame.token = token;
  lastHello = { rooms: new Set(rooms), serverOffset };
  send(frame);
}

function handleFrameText(data) {
  if (typeof data !== 'string') return;
  let frame;
  try { frame = JSON.parse(data); } catch { return; }
  if (!frame || typeof frame !== 'object' || typeof frame.type !== 'string') return;
  const handler = handlers.get(frame.type);
  if (!handler) return; // newer frame types
  try {
    handler(frame);
  } catch (err) {
    console.error(`natter: failed to handle "${frame.type}" frame`, err);
  }
}

/** The welcome is accepted: the connection is up. */
export function acceptWelcome(f) {
  welcomed = true;
  attempt = 0;
  clearTimeout(welcomeTimer);
  sessionId = typeof f.sessionId === 'string' ? f.sessionId : null;
  const given = f.limits && typeof f.limits === 'object' ? f.limits : {};
  for (const key of ['maxTextChars', 'maxFrameBytes', 'sendsPer10s']) {
    if (Number.isSafeInteger(given[key]) && given[key] >= 0) limits[key] = given[key];
  }
  setConn('connected');
  startPing();
}

/** A synced frame arrived; true for the one that answers the hello. */
export function acceptSynced() {
  if (helloSynced) return false;
  helloSynced = true;
  return true;
}

/** Our clock is compared with the server's timestamps; estimate how far apart they are. */
export function noteServerTime(serverTs) {
  // serverTs happened before we received it, so this never overestimates.
  const sample = serverTs - Date.now();
  skew = skew == null ? sample : Math.max(skew, sample);
}

export const serverSkew = () => skew || 0;

/** Forgets the socket, closes it, and plans the next attempt. Safe to call twice. */
function dropSocket(socket) {
  if (ws !== socket) return;
  teardown();
  if (identity.needsToken() || identity.needsNick()) setConn('offline');
  else scheduleReconnect();
}

/** Drops the current socket (the server refused us, say), then waits or reconnects. */
export function drop() {
  if (ws) dropSocket(ws);
}

/** Closes the current socket and resets everything that belonged to it. */
export function teardown() {
  const socket = ws;
  if (!socket) return;
  ws = null;
  socket.onopen = socket.onmessage = socket.onerror = socket.onclose = null;
  try { socket.close(1000); } catch { /* already closed */ }
  clearTimeout(welcomeTimer);
  clearInterval(pingTimer);
  pingTimer = 0;
  pingSentAt = 0;
  welcomed = false;
  helloSynced = false;
  skew = null;
  hooks.down();
}

function scheduleReconnect() {
  clearTimeout(retryTimer);
  retryTimer = 0;
  if (navigator.onLine === false) {
    // The 'online' event brings us back; retrying into a dead network is pointless.
    setConn('offline');
    return;
  }
  // Exponential backoff with full jitter, so a restarted server is not stampeded.
  const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** attempt);
  const delay = Math.random() * ceiling;
  attempt = Math.min(attempt + 1, 20);
  retryAt = Date.now() + delay;
  retryTimer = setTimeout(() => {
    retryTimer = 0;
    connect();
  }, delay);
  setConn('reconnecting');
}

/** Skips the backoff wait: used by the retry button, 'online' and returning to the tab. */
export function reconnectNow() {
  if (ws) return;
  attempt = 0;
  connect();
}

/** Closes the current socket on purpose and connects again at once (new nick, new store). */
export function restart() {
  teardown();
  attempt = 0;
  connect();
}

/** The browser says the network is gone: no socket, no retries, until it is back. */
export function goOffline() {
  teardown();
  clearTimeout(retryTimer);
  retryTimer = 0;
  setConn('offline');
}

/** The browser says the network is back. */
export function networkBack() {
  if (ws) restart();
  else reconnectNow();
}

/** The tab became visible again. */
export function tabVisible() {
  if (!ws && conn !== 'connecting') reconnectNow();
}

function startPing() {
  clearInterval(pingTimer);
  pingSentAt = 0;
  pingTimer = setInterval(() => {
    const socket = ws;
    if (!socket || !welcomed) return;
    // Nothing at all (not even the pong) since the last ping: the link is dead.
    if (pingSentAt && lastFrameAt < pingSentAt) {
      dropSocket(socket);
      return;
    }
    pingSentAt = Date.now();
    send({ type: 'ping' });
  }, PING_EVERY_MS);
}

function setConn(next) {
  const changed = conn !== next;
  conn = next;
  clearInterval(countdownTimer);
  countdownTimer = 0;
  if (next === 'reconnecting') countdownTimer = setInterval(renderStatus, 1000);
  renderStatus();
  if (changed) {
    const words = { connected: 'Connected.', connecting: 'Connecting…', reconnecting: 'Connection lost. Reconnecting.', offline: 'Offline.' };
    announce.textContent = words[next];
  }
}

export function renderStatus() {
  const needToken = identity.needsToken();
  const needNick = identity.needsNick() || !identity.getNick();
  let text;
  if (conn === 'connected') text = 'Connected';
  else if (conn === 'connecting') text = 'Connecting…';
  else if (conn === 'reconnecting') {
    const secs = Math.max(1, Math.ceil((retryAt - Date.now()) / 1000));
    text = `Reconnecting in ${secs}s`;
  } else if (needToken) text = 'Access token needed';
  else if (needNick) text = 'Nickname needed';
  else text = 'Offline';

  const queued = hooks.queued();
  if (queued) text += conn === 'connected' ? ` · sending ${queued}` : ` · ${queued} queued`;

  status.dataset.state = conn;
  group.dataset.state = conn;
  status.dataset.queued = String(queued);
  statusText.textContent = text;
  status.title = sessionId && conn === 'connected' ? `Session ${sessionId}` : '';

  if (conn === 'offline' && needToken) {
    statusAction.textContent = 'Enter token';
    statusAction.hidden = false;
  } else if (conn === 'offline' && needNick) {
    statusAction.textContent = 'Choose nick';
    statusAction.hidden = false;
  } else if (conn === 'reconnecting' || conn === 'offline') {
    statusAction.textContent = 'Retry now';
    statusAction.hidden = false;
  } else {
    statusAction.hidden = true;
  }
}

export function init() {
  statusAction.addEventListener('click', () => hooks.action());
}
