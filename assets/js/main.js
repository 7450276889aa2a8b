/*
 * natter chat page: the entry point (loaded by index.html as an ES module).
 *
 * The page speaks the natter wire protocol (docs/protocol.md); its hello
 * says version 2. It is a few modules without a build step; each starts with
 * what it owns and what it may not touch:
 *
 *   storage.js     localStorage keys and access that never throws
 *   rules.js       nick, room and text rules, as the server checks them
 *   dom.js         element helpers and toasts; the text-only rendering rule
 *   views.js       what one message looks like
 *   identity.js    nick, access token, clientOffsets
 *   offsets.js     serverOffset and storeId: how far we read, in which store
 *   connection.js  the WebSocket: hello, welcome, backoff, ping, status, dispatch
 *   rooms.js       open rooms, the room on screen, unread, the sidebar
 *   presence.js    who is here, who is typing, the member panel
 *   messages.js    each room's messages, pending sends, history, scrolling
 *   outbox.js      unacknowledged sends, persisted and resent
 *   composer.js    the input, drafts, our typing state
 *   dialogs.js     the nick and token dialogs
 *
 * Rule for every module: data from the server or the user reaches the DOM
 * only as text (textContent / text nodes, see dom.js el()), never as parsed
 * HTML.
 *
 * Owns: the order of things between modules: what each is told, and when,
 * as rooms change, the socket goes, and welcome, synced and error frames
 * arrive; the page-wide events; start-up.
 * May not touch: any module's state except through its exported functions.
 */

import * as composer from './composer.js';
import * as connection from './connection.js';
import * as dialogs from './dialogs.js';
import * as identity from './identity.js';
import * as messages from './messages.js';
import * as offsets from './offsets.js';
import * as outbox from './outbox.js';
import * as presence from './presence.js';
import * as rooms from './rooms.js';
import { toast } from './dom.js';

// ---------------------------------------------------------------------------
// Wiring: the lower modules' hooks, each filled in one place
// ---------------------------------------------------------------------------

rooms.wire({
  created: messages.created,
  departing: composer.departing,
  leaving(prev) {
    // The composer belongs to the room on screen: park its text, bring the other one's back.
    composer.leaving(prev);
    presence.leaving();
    messages.leaving(prev);
  },
  arrived(name, changed) {
    composer.arrived(name, changed);
    messages.arrived(name);
  },
  removed(name, wasCurrent) {
    outbox.roomRemoved(name);
    messages.removed(name);
    presence.removed(name, wasCurrent);
    composer.removed(name, wasCurrent);
  },
  changed(name) {
    presence.render();
    messages.renderPill();
    composer.update();
    connection.renderStatus();
    // After the composer: its height decides whether the log fills the view.
    messages.fillHistory(name);
  },
  viewers: presence.viewersOf,
});

messages.wire({ confirmed: outbox.drop });

connection.wire({
  rooms: rooms.names,
  queued: outbox.count,
  down() {
    // Rooms first: a log's top line depends on whether its room is synced.
    rooms.socketDown();
    messages.socketDown();
    composer.socketDown();
    outbox.socketDown();
    presence.socketDown();
  },
  action() {
    if (identity.needsToken()) dialogs.openTokenDialog(false);
    else if (identity.needsNick() || !identity.getNick()) dialogs.openNickDialog({ first: !identity.getNick() });
    else connection.reconnectNow();
  },
});

// ---------------------------------------------------------------------------
// Frames that concern several modules (the others register their own)
// ---------------------------------------------------------------------------

connection.on('welcome', (f) => {
  if (offsets.storeChanged(f.storeId)) {
    forgetStore();
    // The hello asked for ids above an offset from the old store: ask again
    // without one, on a new connection (the replay of this one is already wrong).
    if (connection.hello().serverOffset != null) {
      connection.restart();
      return;
    }
  }
  connection.acceptWelcome(f);
  identity.setServerNick(f.nick);
  composer.welcomed();
  composer.update();
  rooms.welcomed(f, connection.hello());
});

connection.on('synced', (f) => {
  if (Number.isSafeInteger(f.serverOffset)) offsets.bump(f.serverOffset);
  const synced = rooms.markSynced(Array.isArray(f.rooms) ? f.rooms : []);
  for (const name of synced) messages.renderTop(name);
  if (connection.acceptSynced()) outbox.flush();
  // Text typed while away goes out now: after the queued sends, which clear drafts.
  for (const name of synced) composer.pushDraft(name);
  messages.fillHistory(rooms.current());
});

connection.on('error', (f) => {
  const code = typeof f.code === 'string' ? f.code : 'error';
  const message = typeof f.message === 'string' && f.message ? f.message : code;
  const ref = typeof f.ref === 'string' ? f.ref : null;

  // Typing and drafts are best effort (e.g. not_joined while a join is on its way).
  if (ref && composer.ownsRef(ref)) return;

  if (code === 'unauthorized') {
    // The server closes the socket next; wait for the user instead of retrying.
    const hadToken = identity.refuseToken();
    connection.drop();
    dialogs.openTokenDialog(hadToken);
    return;
  }
  if (ref && (outbox.sendFailed(ref, f) || messages.historyFailed(ref, message))) return;
  if (code === 'invalid_nick' && !connection.isWelcomed()) {
    identity.refuseNick();
    connection.drop();
    dialogs.openNickDialog({ first: false, error: `The server did not accept this nickname: ${message}` });
    return;
  }
  toast(message);
});

/**
 * The server's store is not the one our offset and caches came from (a
 * restored backup, say: protocol version 2, "Store identity"). Forget all
 * that was derived from it; unacknowledged sends stay in the outbox and go out
 * again with their clientOffset, which the store dedups.
 */
function forgetStore() {
  offsets.forget();
  rooms.forgetStore();
  messages.forgetStore();
  composer.forgetStore();
}

// ---------------------------------------------------------------------------
// Page-wide events
// ---------------------------------------------------------------------------

function bindPageEvents() {
  // A reload right after typing must not lose the last keystrokes' draft.
  window.addEventListener('pagehide', (ev) => {
    composer.pageHidden();
    // A page kept in the back/forward cache would keep its socket, and so look
    // present in every room, until the user comes back. Go, and return with it.
    if (ev.persisted) connection.teardown();
  });
  window.addEventListener('pageshow', (ev) => {
    if (ev.persisted) connection.reconnectNow();
  });

  document.addEventListener('keydown', (ev) => {
    if (ev.key === 'Escape' && (presence.escape() || rooms.escapeDrawer())) return;
    // Alt+Up / Alt+Down walk through the rooms from anywhere.
    if (ev.altKey && (ev.key === 'ArrowUp' || ev.key === 'ArrowDown') && rooms.step(ev.key === 'ArrowUp' ? -1 : 1)) {
      ev.preventDefault();
    }
  });

  // A network change kills sockets silently (no close frame reaches us), so
  // waiting for the ping check would leave sends hanging for half a minute:
  // drop the socket when the browser says it is offline, and start a fresh
  // one when it is back.
  window.addEventListener('online', connection.networkBack);
  window.addEventListener('offline', connection.goOffline);
  document.addEventListener('visibilitychange', () => {
    if (document.visibilityState === 'visible') connection.tabVisible();
  });
  window.addEventListener('resize', () => {
    rooms.onResize();
    messages.keepAtBottom();
  });
}

// ---------------------------------------------------------------------------
// Start-up
// ---------------------------------------------------------------------------

function start() {
  connection.init();
  rooms.init();
  messages.init();
  outbox.init();
  presence.init();
  composer.init();
  dialogs.init();
  bindPageEvents();

  identity.load();
  offsets.load();
  rooms.load();
  outbox.load();
  rooms.showFirst();

  dialogs.renderMe();
  rooms.renderSidebar();
  rooms.renderHeader();
  presence.render();
  composer.update();
  connection.renderStatus();
  if (identity.getNick()) connection.connect();
  else {
    connection.goOffline();
    dialogs.openNickDialog({ first: true });
  }
}

start();
