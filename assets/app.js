/*
 * natter chat page: app.js
 *
 * This file owns everything the page at "/" does: the nick and access-token
 * prompts, the room sidebar, message rendering, the outbox of unacknowledged
 * sends (persisted in localStorage), history paging, presence (who is in a
 * room), typing indicators, server-side drafts, and the WebSocket connection
 * speaking natter wire protocol v1 (PROTOCOL.md).
 *
 * Rule for the whole file: data from the server or the user reaches the DOM
 * only as text (textContent / text nodes, see el()), never as parsed HTML.
 */
'use strict';

(() => {
  // ===========================================================================
  // 1. Constants
  // ===========================================================================

  const ROOM_RE = /^[a-z0-9][a-z0-9_-]{0,63}$/;
  const DEFAULT_ROOMS = ['general'];
  const MAX_ROOMS = 50;                 // protocol limit per connection
  const MAX_NICK_CHARS = 32;
  const HISTORY_PAGE = 50;
  const PING_EVERY_MS = 25000;          // browsers cannot see WebSocket pings; the server drops silent sockets at 60 s
  const WELCOME_TIMEOUT_MS = 12000;     // a socket that never says welcome is as good as dead
  const BACKOFF_BASE_MS = 500;
  const BACKOFF_CAP_MS = 20000;
  const GROUP_WINDOW_MS = 5 * 60 * 1000;
  const STICK_PX = 48;                  // "at the bottom" tolerance (zoom gives fractional scroll values)
  const TOP_PX = 150;                   // ask for older history a little before the very top
  const HISTORY_ERROR_PAUSE_MS = 5000;
  const TOAST_MS = 8000;
  const MAX_KNOWN_ROOMS = 500;
  const TYPING_RENEW_MS = 2000;         // while typing, "typing: true" goes out at most this often
  const TYPING_IDLE_MS = 3000;          // no keystroke for this long ends our typing state
  const TYPING_EXPIRE_MS = 6000;        // someone else's typing state without renewal is dropped
  const DRAFT_DEBOUNCE_MS = 300;        // a draft goes out this long after the last keystroke...
  const DRAFT_MAX_WAIT_MS = 1000;       // ...or at least this often during continuous typing
  const SUMMARY_NAMES = 3;              // names spelled out in the header's member summary
  const MEMBER_LIST_MAX = 500;          // the member panel lists at most this many
  // Refs on best-effort frames: their errors (not_joined right after a leave, say) stay silent.
  const TYPING_REF = 'typing';
  const DRAFT_REF = 'draft';
  // Errors on a send that mean "not stored, try again with the same clientOffset".
  const RETRY_CODES = new Set(['internal', 'rate_limited']);

  const KEY = {
    nick: 'natter.nick',
    token: 'natter.token',
    rooms: 'natter.rooms',
    current: 'natter.currentRoom',
    offset: 'natter.serverOffset',
    device: 'natter.devicePrefix',
    counter: 'natter.sendCounter',
    outbox: 'natter.outbox',
    known: 'natter.knownRooms',
  };

  // Unicode White_Space, which is what the server trims and calls "empty".
  // (JS \s differs: it includes U+FEFF and lacks U+0085.)
  const WS = '\\t\\n\\v\\f\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000';
  const TRIM_RE = new RegExp(`^[${WS}]+|[${WS}]+$`, 'g');
  const BLANK_RE = new RegExp(`^[${WS}]*$`);
  const CONTROL_RE = /[\u0000-\u001f\u007f-\u009f]/;

  // ===========================================================================
  // 2. Storage (localStorage can throw: private mode, quota, disabled)
  // ===========================================================================

  const store = {
    get(key) {
      try { return localStorage.getItem(key); } catch { return null; }
    },
    set(key, value) {
      try { localStorage.setItem(key, value); } catch { /* keep working from memory */ }
    },
    remove(key) {
      try { localStorage.removeItem(key); } catch { /* ignore */ }
    },
    getJSON(key, fallback) {
      const raw = this.get(key);
      if (raw == null) return fallback;
      try { return JSON.parse(raw); } catch { return fallback; }
    },
    setJSON(key, value) { this.set(key, JSON.stringify(value)); },
  };

  // ===========================================================================
  // 3. Validation helpers
  // ===========================================================================

  /** Length in Unicode scalar values, as the server counts. */
  function charCount(s) {
    let n = 0;
    for (const _ of s) n++; // eslint-disable-line no-unused-vars
    return n;
  }

  /** Returns {nick} or {error} following the protocol's nick rules. */
  function checkNick(raw) {
    const nick = String(raw).replace(TRIM_RE, '');
    if (!nick) return { error: 'Please enter a nickname.' };
    if (charCount(nick) > MAX_NICK_CHARS) return { error: `At most ${MAX_NICK_CHARS} characters, please.` };
    if (CONTROL_RE.test(nick)) return { error: 'The nickname contains a control character.' };
    return { nick };
  }

  /** Normalises what the user typed into a room name, or returns null. */
  function toRoomName(raw) {
    const name = String(raw).replace(TRIM_RE, '').replace(/^#/, '').toLowerCase();
    return ROOM_RE.test(name) ? name : null;
  }

  function isMessage(m) {
    return m && typeof m === 'object' && Number.isSafeInteger(m.id) &&
      typeof m.nick === 'string' && typeof m.text === 'string' && Number.isFinite(m.ts);
  }

  // ===========================================================================
  // 4. State
  // ===========================================================================

  const state = {
    nick: null,            // our nick (persisted)
    serverNick: null,      // the nick as the server echoed it in welcome
    token: null,           // access token (persisted)
    devicePrefix: null,    // random per-device part of every clientOffset
    sendCounter: 0,        // in-memory mirror, in case storage is unavailable
    roomOrder: [],         // open rooms in sidebar order (persisted)
    rooms: new Map(),      // name -> Room (see createRoom)
    knownRooms: new Set(), // every room this device ever joined (persisted)
    current: null,         // name of the room on screen
    serverOffset: null,    // highest message id seen (persisted)
    outbox: [],            // unacknowledged sends, oldest first (persisted)
    limits: { maxTextChars: 4000, maxFrameBytes: 65536, sendsPer10s: 20 },
    sessionId: null,

    // Connection
    ws: null,
    conn: 'connecting',    // connected | connecting | reconnecting | offline
    connSeq: 0,            // increases per socket; outbox entries remember where they were sent
    welcomed: false,
    helloSynced: false,    // the synced answering our hello has arrived
    helloRooms: new Set(),
    helloOffset: null,
    unreadFloor: 0,        // ids at or below this were around before this session: not "unread"
    attempt: 0,
    retryAt: 0,
    retryTimer: 0,
    countdownTimer: 0,
    welcomeTimer: 0,
    pingTimer: 0,
    pingSentAt: 0,
    lastFrameAt: 0,
    flushTimer: 0,
    needToken: false,      // waiting for the user to type an access token
    needNick: false,       // the server rejected our nick

    historySeq: 0,
    historyRefs: new Map(), // ref -> room name

    // Typing and drafts (what we send; what others send lives on each Room)
    typingOut: { room: null, active: false, lastSentAt: 0, idleTimer: 0 },
    draftRoom: null,       // the Room whose draft is waiting for its debounce
    draftTimer: 0,
    draftSince: 0,         // first keystroke not yet sent as a draft
    draftNick: null,       // the nick the local draft state belongs to
    skew: null,            // estimate of (server clock - our clock), in ms, from this connection
    memberPanelOpen: false,
  };

  // ===========================================================================
  // 5. DOM helpers and references
  // ===========================================================================

  const $ = (id) => document.getElementById(id);
  const dom = {
    app: $('app'),
    main: $('main'),
    sidebar: $('sidebar'),
    roomList: $('room-list'),
    roomsEmpty: $('rooms-empty'),
    joinForm: $('join-form'),
    joinInput: $('join-room-input'),
    joinError: $('join-error'),
    meAvatar: $('me-avatar'),
    meNick: $('me-nick'),
    changeNick: $('change-nick-btn'),
    drawerOpen: $('drawer-open'),
    drawerClose: $('drawer-close'),
    drawerBadge: $('drawer-badge'),
    backdrop: $('drawer-backdrop'),
    roomTitle: $('room-title'),
    roomMeta: $('room-meta'),
    presenceLine: $('presence-line'),
    presenceToggle: $('presence-toggle'),
    viewerCount: $('viewer-count'),
    memberSummary: $('member-summary'),
    memberPanel: $('member-panel'),
    memberPanelTitle: $('member-panel-title'),
    memberPanelSub: $('member-panel-sub'),
    memberPanelClose: $('member-panel-close'),
    memberList: $('member-list'),
    typingLine: $('typing-line'),
    connGroup: $('conn-group'),
    status: $('conn-status'),
    statusText: $('conn-text'),
    statusAction: $('conn-action'),
    announce: $('conn-announce'),
    leaveBtn: $('leave-room-btn'),
    logs: $('logs'),
    noRoom: $('no-room'),
    pill: $('new-msgs-pill'),
    composer: $('composer'),
    input: $('message-input'),
    sendBtn: $('send-btn'),
    counter: $('char-count'),
    toasts: $('toasts'),
    nickDialog: $('nick-dialog'),
    nickForm: $('nick-form'),
    nickTitle: $('nick-title'),
    nickDesc: $('nick-desc'),
    nickInput: $('nick-input'),
    nickError: $('nick-error'),
    nickCancel: $('nick-cancel'),
    nickSubmit: $('nick-submit'),
    tokenDialog: $('token-dialog'),
    tokenForm: $('token-form'),
    tokenDesc: $('token-desc'),
    tokenInput: $('token-input'),
    tokenError: $('token-error'),
    tokenCancel: $('token-cancel'),
  };

  /** Creates an element. Attributes are set verbatim; string children become text nodes. */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    if (attrs) {
      for (const [name, value] of Object.entries(attrs)) {
        if (value == null || value === false) continue;
        node.setAttribute(name, value === true ? '' : String(value));
      }
    }
    for (const child of children) {
      if (child == null) continue;
      node.appendChild(typeof child === 'string' ? document.createTextNode(child) : child);
    }
    return node;
  }

  function setFieldError(input, errorEl, message) {
    errorEl.textContent = message || '';
    errorEl.hidden = !message;
    if (message) input.setAttribute('aria-invalid', 'true');
    else input.removeAttribute('aria-invalid');
  }

  const isNarrow = () => window.matchMedia('(max-width: 720px)').matches;

  // ===========================================================================
  // 6. Formatting: times, days, avatars
  // ===========================================================================

  const timeFmt = new Intl.DateTimeFormat(undefined, { hour: 'numeric', minute: '2-digit' });
  const fullFmt = new Intl.DateTimeFormat(undefined, {
    weekday: 'long', year: 'numeric', month: 'long', day: 'numeric', hour: 'numeric', minute: '2-digit',
  });
  const dayFmt = new Intl.DateTimeFormat(undefined, { weekday: 'long', month: 'long', day: 'numeric' });
  const dayYearFmt = new Intl.DateTimeFormat(undefined, { weekday: 'long', month: 'long', day: 'numeric', year: 'numeric' });

  function dayKey(ts) {
    const d = new Date(ts);
    return d.getFullYear() * 10000 + (d.getMonth() + 1) * 100 + d.getDate();
  }

  function dayLabel(ts) {
    const now = new Date();
    const key = dayKey(ts);
    if (key === dayKey(now.getTime())) return 'Today';
    const yesterday = new Date(now.getFullYear(), now.getMonth(), now.getDate() - 1);
    if (key === dayKey(yesterday.getTime())) return 'Yesterday';
    const d = new Date(ts);
    return (d.getFullYear() === now.getFullYear() ? dayFmt : dayYearFmt).format(d);
  }

  /** FNV-1a over code points: stable, cheap, spreads similar nicks apart. */
  function hashString(s) {
    let h = 0x811c9dc5;
    for (const ch of s) {
      h ^= ch.codePointAt(0);
      h = Math.imul(h, 0x01000193);
    }
    return h >>> 0;
  }

  function initials(nick) {
    const words = nick.split(/[\s._\-]+/u).filter(Boolean);
    const first = (w) => ([...w][0] || '');
    let text;
    if (words.length >= 2) text = first(words[0]) + first(words[1]);
    else text = first(words[0] || nick);
    return text.toLocaleUpperCase() || '?';
  }

  function paintAvatar(node, nick) {
    node.textContent = initials(nick);
    node.style.setProperty('--avatar-h', String(hashString(nick) % 360));
  }

  // ===========================================================================
  // 7. Rooms: creation, sidebar, switching, joining, leaving
  // ===========================================================================

  function createRoom(name, { fresh = false } = {}) {
    const top = el('div', { class: 'log-top' });
    const list = el('ol', { class: 'msgs' });
    const log = el('div', {
      class: 'log', role: 'log', 'aria-live': 'polite', 'aria-label': `Messages in #${name}`,
      tabindex: '0', 'data-log-room': name, hidden: true,
    }, top, list);

    const badge = el('span', { class: 'badge', hidden: true });
    const badgeSr = el('span', { class: 'sr-only' });
    const viewersEl = el('span', { class: 'room-viewers', 'data-testid': 'room-viewers', 'aria-hidden': 'true', hidden: true });
    const viewersSr = el('span', { class: 'sr-only' });
    const navBtn = el('button', { type: 'button', class: 'room-btn', 'data-room': name, 'aria-current': 'false' },
      el('span', { class: 'room-hash', 'aria-hidden': 'true' }, '#'),
      el('span', { class: 'room-name' }, name),
      viewersEl, badge, badgeSr, viewersSr);
    const leaveBtn = el('button', {
      type: 'button', class: 'room-leave', 'data-leave-room': name,
      'aria-label': `Leave #${name}`, title: `Leave #${name}`,
    }, '×');
    const navItem = el('li', { class: 'room-item' }, navBtn, leaveBtn);

    const room = {
      name, log, top, list, navItem, navBtn, badge, badgeSr, viewersEl, viewersSr,
      records: [],            // confirmed messages, ascending id: {id, nick, ts, text, clientOffset, el}
      ids: new Set(),         // defensive dedupe
      pending: new Map(),     // clientOffset -> {rec, el, status}; always rendered after the confirmed ones
      fresh,                  // never joined before: the join goes out without serverOffset
      joined: false,
      synced: false,
      hasMore: null,          // null: unknown yet; false: the beginning is loaded
      historyRef: null,
      historyPausedUntil: 0,
      liveTimer: 0,
      stick: true,            // view follows new messages
      savedTop: 0,
      newBelow: false,
      unread: 0,
      floor: 0,
      presence: null,         // {viewers, members: Map nick -> connections (null: unknown), stale}
      typers: new Map(),      // nick -> expiry timer, in the order they started typing
      draftText: '',          // the composer text while another room is on screen
      draftKnown: '',         // the draft the server holds, as far as we know
      draftDirty: false,      // local edits the server has not got yet
      draftEditAt: 0,         // our clock, last local edit
    };

    navBtn.addEventListener('click', () => {
      switchRoom(name);
      closeDrawer();
      if (!isNarrow()) dom.input.focus();
    });
    leaveBtn.addEventListener('click', () => leaveRoom(name));
    log.addEventListener('scroll', () => onLogScroll(room), { passive: true });

    dom.logs.insertBefore(log, dom.noRoom);
    dom.roomList.appendChild(navItem);
    state.rooms.set(name, room);
    renderLogTop(room);
    return room;
  }

  function currentRoom() {
    return state.current ? state.rooms.get(state.current) || null : null;
  }

  function saveRooms() {
    store.setJSON(KEY.rooms, state.roomOrder);
    if (state.current) store.set(KEY.current, state.current);
  }

  function rememberRoom(name) {
    if (state.knownRooms.has(name)) return;
    state.knownRooms.add(name);
    let list = [...state.knownRooms];
    if (list.length > MAX_KNOWN_ROOMS) {
      list = list.slice(-MAX_KNOWN_ROOMS);
      state.knownRooms = new Set(list);
    }
    store.setJSON(KEY.known, list);
  }

  function switchRoom(name) {
    const next = state.rooms.get(name);
    if (!next) return;
    const prev = currentRoom();
    if (prev !== next) {
      // The composer belongs to the room on screen: park its text, bring the other one's back.
      if (prev) {
        prev.draftText = dom.input.value;
        if (state.draftRoom === prev) flushDraft();
      }
      stopTyping();
      closeMemberPanel();
      quietTypingLine();
    }
    if (prev && prev !== next) {
      prev.savedTop = prev.log.scrollTop;
      prev.log.hidden = true;
      prev.log.removeAttribute('id');
      prev.log.removeAttribute('data-testid');
    }
    const arriving = prev !== next;
    state.current = name;
    store.set(KEY.current, name);
    if (arriving) setInputText(next.draftText);
    next.log.hidden = false;
    next.log.id = 'message-list';
    next.log.setAttribute('data-testid', 'message-list');
    if (next.stick) scrollToBottom(next);
    else next.log.scrollTop = next.savedTop;
    next.unread = 0;
    renderSidebar();
    renderRoomHeader();
    renderPill();
    updateComposer();
    maybeFillHistory(next);
  }

  function joinRoom(name) {
    if (state.rooms.has(name)) {
      switchRoom(name);
      return true;
    }
    if (state.roomOrder.length >= MAX_ROOMS) {
      setFieldError(dom.joinInput, dom.joinError, `You can have at most ${MAX_ROOMS} rooms open. Leave one first.`);
      return false;
    }
    const room = createRoom(name, { fresh: !state.knownRooms.has(name) });
    // Messages already stored when we join are not news.
    room.floor = state.serverOffset || 0;
    rememberRoom(name);
    state.roomOrder.push(name);
    switchRoom(name);
    saveRooms();
    if (state.welcomed) sendJoin(room);
    return true;
  }

  function sendJoin(room) {
    const frame = { type: 'join', room: room.name };
    // A room never seen before gets the newest messages; a known one only what we missed.
    if (!room.fresh && state.serverOffset != null) frame.serverOffset = state.serverOffset;
    room.synced = false;
    sendFrame(frame);
  }

  function leaveRoom(name) {
    const room = state.rooms.get(name);
    if (!room) return;
    // What was typed stays on the server as the room's draft, for a later join.
    if (state.draftRoom === room) flushDraft();
    if (state.welcomed) sendFrame({ type: 'leave', room: name });
    const hadFocus = room.navItem.contains(document.activeElement);
    removeRoom(room);
    // The clicked button is gone; put keyboard focus somewhere sensible.
    if (hadFocus) {
      const next = currentRoom();
      (next ? next.navBtn : dom.joinInput).focus();
    }
    toast(`You left #${name}.`, { kind: 'info' });
  }

  function removeRoom(room) {
    const name = room.name;
    const idx = state.roomOrder.indexOf(name);
    // Queued sends cannot be delivered once we are out of the room.
    const before = state.outbox.length;
    state.outbox = state.outbox.filter((e) => e.room !== name);
    if (state.outbox.length !== before) saveOutbox();
    room.log.remove();
    room.navItem.remove();
    state.rooms.delete(name);
    if (idx >= 0) state.roomOrder.splice(idx, 1);
    clearTypers(room);
    // The server ends our typing state in a room we leave.
    if (state.typingOut.room === name) resetTypingOut();
    if (state.draftRoom === room) cancelDraftTimer();
    if (state.current === name) {
      state.current = null;
      closeMemberPanel();
      setInputText('');
      const fallback = state.roomOrder[Math.min(idx, state.roomOrder.length - 1)];
      if (fallback) switchRoom(fallback);
      else store.remove(KEY.current);
    }
    saveRooms();
    renderSidebar();
    renderRoomHeader();
    renderPill();
    updateComposer();
    renderStatus();
  }

  function renderSidebar() {
    let totalUnread = 0;
    for (const room of state.rooms.values()) {
      const active = room.name === state.current;
      room.navBtn.setAttribute('aria-current', active ? 'true' : 'false');
      const unread = active ? 0 : room.unread;
      totalUnread += unread;
      room.badge.hidden = unread === 0;
      room.badge.textContent = unread > 99 ? '99+' : String(unread);
      room.badge.setAttribute('aria-hidden', 'true');
      room.badgeSr.textContent = unread ? `, ${unread} unread` : '';
      room.navBtn.classList.toggle('has-unread', unread > 0);
      const viewers = room.presence ? room.presence.viewers : null;
      room.viewersEl.hidden = viewers == null;
      room.viewersEl.classList.toggle('stale', !!(room.presence && room.presence.stale));
      room.viewersEl.textContent = viewers == null ? '' : String(viewers);
      room.viewersSr.textContent = viewers == null ? '' : `, ${viewers} viewing`;
    }
    dom.roomsEmpty.hidden = state.rooms.size > 0;
    dom.noRoom.hidden = state.rooms.size > 0;
    dom.drawerBadge.hidden = totalUnread === 0;
    const room = currentRoom();
    document.title = `${totalUnread ? `(${totalUnread}) ` : ''}${room ? `#${room.name} · ` : ''}natter`;
  }

  function renderRoomHeader() {
    const room = currentRoom();
    dom.roomTitle.textContent = room ? `#${room.name}` : 'natter';
    dom.roomMeta.hidden = !room;
    renderPresence();
    renderTyping();
    dom.leaveBtn.hidden = !room;
    if (room) dom.leaveBtn.setAttribute('aria-label', `Leave #${room.name}`);
  }

  // ===========================================================================
  // 8. Messages: building, grouping, ordered insertion, pending sends
  // ===========================================================================

  function isOwn(nick, clientOffset) {
    if (clientOffset && state.devicePrefix && clientOffset.startsWith(`${state.devicePrefix}-`)) return true;
    return nick === state.nick || (state.serverNick != null && nick === state.serverNick);
  }

  function buildMessageEl({ id, nick, text, ts, clientOffset }) {
    const own = isOwn(nick, clientOffset);
    const li = el('li', { class: own ? 'msg own' : 'msg' });
    if (id != null) li.dataset.id = String(id);
    if (clientOffset) li.dataset.clientOffset = clientOffset;
    li.dataset.nick = nick;

    const avatar = el('span', { class: 'avatar', 'aria-hidden': 'true' });
    paintAvatar(avatar, nick);
    const head = el('div', { class: 'msg-head' },
      el('span', { class: 'nick' }, nick),
      own ? el('span', { class: 'you-tag' }, 'you') : null,
      el('time', { class: 'msg-time' }));
    const body = el('div', { class: 'msg-body' }, head, el('div', { class: 'msg-text' }, text));
    li.append(el('time', { class: 'gutter-time', 'aria-hidden': 'true' }), avatar, body);
    setMessageTime(li, ts);
    return li;
  }

  function setMessageTime(li, ts) {
    const d = new Date(ts);
    const short = timeFmt.format(d);
    const full = fullFmt.format(d);
    for (const t of li.querySelectorAll('.msg-time, .gutter-time')) {
      t.textContent = short;
      t.dateTime = d.toISOString();
      t.title = full;
    }
  }

  /** Day separator and grouping depend only on the message before this one. */
  function decorate(li, rec, prev) {
    const sameDay = !!prev && dayKey(prev.ts) === dayKey(rec.ts);
    const grouped = sameDay && !prev.failed && prev.nick === rec.nick &&
      rec.ts >= prev.ts && rec.ts - prev.ts < GROUP_WINDOW_MS;
    li.classList.toggle('cont', grouped);
    let sep = li.firstElementChild && li.firstElementChild.classList.contains('day-sep') ? li.firstElementChild : null;
    if (sameDay) {
      if (sep) sep.remove();
    } else {
      const label = dayLabel(rec.ts);
      if (!sep) {
        sep = el('div', { class: 'day-sep', role: 'separator' }, el('span', null, label));
        li.prepend(sep);
      } else {
        sep.firstElementChild.textContent = label;
      }
    }
  }

  function redecoratePending(room) {
    let prev = room.records.length ? room.records[room.records.length - 1] : null;
    for (const p of room.pending.values()) {
      decorate(p.el, p.rec, prev);
      prev = p.rec;
    }
  }

  function firstPendingEl(room) {
    for (const p of room.pending.values()) return p.el;
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
  function insertConfirmed(room, msg) {
    if (room.ids.has(msg.id)) {
      // Already shown (e.g. from a replay): a leftover pending copy must not linger.
      if (msg.clientOffset && room.pending.has(msg.clientOffset)) discardPending(room, msg.clientOffset);
      return null;
    }
    room.ids.add(msg.id);

    let li;
    const pend = msg.clientOffset ? room.pending.get(msg.clientOffset) : null;
    if (pend) {
      room.pending.delete(msg.clientOffset);
      li = pend.el;
      li.classList.remove('pending', 'failed');
      li.removeAttribute('aria-busy');
      pend.status.remove();
      li.dataset.id = String(msg.id);
      setMessageTime(li, msg.ts);
      dropFromOutbox(msg.clientOffset);
    } else {
      li = buildMessageEl(msg);
    }

    const rec = { id: msg.id, nick: msg.nick, ts: msg.ts, text: msg.text, clientOffset: msg.clientOffset || null, el: li };
    const records = room.records;
    const idx = records.length && records[records.length - 1].id > msg.id ? lowerBound(records, msg.id) : records.length;
    records.splice(idx, 0, rec);
    const next = records[idx + 1];
    room.list.insertBefore(li, next ? next.el : firstPendingEl(room));
    decorate(li, rec, records[idx - 1] || null);
    if (next) decorate(next.el, next, rec);
    else redecoratePending(room);
    return li;
  }

  function addPendingEl(room, entry) {
    const li = buildMessageEl({ nick: entry.nick, text: entry.text, ts: entry.createdAt, clientOffset: entry.clientOffset });
    li.classList.add('pending');
    li.setAttribute('aria-busy', 'true');
    // flushOutbox switches this to "sending…" once the frame is really on the wire.
    const status = el('div', { class: 'msg-status' }, state.helloSynced ? 'waiting to send…' : 'waiting for connection…');
    li.querySelector('.msg-body').appendChild(status);
    const rec = { nick: entry.nick, ts: entry.createdAt, failed: false };
    room.pending.set(entry.clientOffset, { rec, el: li, status });
    room.list.appendChild(li);
    redecoratePending(room);
  }

  function discardPending(room, clientOffset) {
    const pend = room.pending.get(clientOffset);
    if (!pend) return;
    pend.el.remove();
    room.pending.delete(clientOffset);
    redecoratePending(room);
  }

  function setPendingStatus(entry, text) {
    const room = state.rooms.get(entry.room);
    const pend = room && room.pending.get(entry.clientOffset);
    if (pend && !pend.rec.failed) pend.status.textContent = text;
  }

  function markFailed(entry, reason) {
    const room = state.rooms.get(entry.room);
    const pend = room && room.pending.get(entry.clientOffset);
    if (!pend) return;
    pend.rec.failed = true;
    pend.el.classList.remove('pending');
    pend.el.classList.add('failed');
    pend.el.removeAttribute('aria-busy');
    const dismiss = el('button', { type: 'button', class: 'link-btn' }, 'Dismiss');
    dismiss.addEventListener('click', () => {
      discardPending(room, entry.clientOffset);
      renderLogTop(room);
      dom.input.focus();
    });
    pend.status.replaceChildren(el('span', null, `Not sent: ${reason}`), dismiss);
    pend.status.setAttribute('role', 'alert');
    redecoratePending(room);
  }

  /** Top-of-log line: load-more button, loading note, or "beginning of #room". */
  function renderLogTop(room) {
    const top = room.top;
    if (room.hasMore === false) {
      const empty = room.records.length === 0 && room.pending.size === 0;
      top.replaceChildren(el('div', { class: 'beginning' },
        el('strong', null, `#${room.name}`),
        empty ? 'No messages yet. Say hello!' : `This is the beginning of #${room.name}.`));
    } else if (room.historyRef) {
      top.replaceChildren(el('span', null, 'Loading older messages…'));
    } else if (room.records.length && room.synced) {
      const more = el('button', { type: 'button', class: 'link-btn' }, 'Load older messages');
      more.addEventListener('click', () => requestHistory(room));
      top.replaceChildren(more);
    } else {
      top.replaceChildren();
    }
  }

  // ===========================================================================
  // 9. Scrolling: stick to bottom, "new messages" pill, history paging
  // ===========================================================================

  function distanceFromBottom(log) {
    return log.scrollHeight - log.scrollTop - log.clientHeight;
  }

  function scrollToBottom(room) {
    room.log.scrollTop = room.log.scrollHeight;
    room.stick = true;
    room.newBelow = false;
  }

  function onLogScroll(room) {
    if (room.name !== state.current) return;
    room.stick = distanceFromBottom(room.log) <= STICK_PX;
    if (room.stick && room.newBelow) {
      room.newBelow = false;
      renderPill();
    }
    if (room.log.scrollTop < TOP_PX) requestHistory(room);
  }

  function renderPill() {
    const room = currentRoom();
    dom.pill.hidden = !(room && room.newBelow);
  }

  /**
   * After new content arrives at the bottom of a room. `jump`: the user just sent
   * it, so show it even if they were scrolled up. `quiet`: no pill for it (our own).
   */
  function afterAppend(room, { jump = false, quiet = false } = {}) {
    if (room.name !== state.current) return;
    if (room.stick || jump) scrollToBottom(room);
    else if (!quiet) room.newBelow = true;
    renderPill();
  }

  function requestHistory(room) {
    if (!state.welcomed || !room.synced || room.historyRef || room.hasMore === false) return;
    if (Date.now() < room.historyPausedUntil) return;
    const ref = `h${++state.historySeq}`;
    const frame = { type: 'history', room: room.name };
    if (room.records.length) frame.before = room.records[0].id;
    frame.limit = HISTORY_PAGE;
    frame.ref = ref;
    if (!sendFrame(frame)) return;
    room.historyRef = ref;
    state.historyRefs.set(ref, room.name);
    renderLogTop(room);
  }

  /** Keeps loading older pages while the visible room does not fill its view. */
  function maybeFillHistory(room) {
    if (!room || room.name !== state.current || room.hasMore === false) return;
    const log = room.log;
    if (log.scrollHeight - log.clientHeight <= TOP_PX || log.scrollTop < TOP_PX) requestHistory(room);
  }

  // ===========================================================================
  // 10. Outbox and sending
  // ===========================================================================

  function saveOutbox() {
    store.setJSON(KEY.outbox, state.outbox.map((e) => ({
      clientOffset: e.clientOffset, room: e.room, text: e.text, nick: e.nick, createdAt: e.createdAt,
    })));
  }

  function dropFromOutbox(clientOffset) {
    const i = state.outbox.findIndex((e) => e.clientOffset === clientOffset);
    if (i < 0) return null;
    const [entry] = state.outbox.splice(i, 1);
    saveOutbox();
    renderStatus();
    return entry;
  }

  function newClientOffset() {
    // Re-read the counter so two tabs of the same device do not reuse a number.
    const stored = parseInt(store.get(KEY.counter), 10);
    const n = Math.max(Number.isSafeInteger(stored) ? stored : 0, state.sendCounter) + 1;
    state.sendCounter = n;
    store.set(KEY.counter, String(n));
    return `${state.devicePrefix}-${n}`;
  }

  function randomPrefix() {
    const bytes = new Uint8Array(8);
    crypto.getRandomValues(bytes);
    return Array.from(bytes, (b) => (b % 36).toString(36)).join('');
  }

  function sendFrame(frame) {
    const ws = state.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) return false;
    try {
      ws.send(JSON.stringify(frame));
      return true;
    } catch (err) {
      console.error('natter: send failed', err);
      return false;
    }
  }

  /**
   * Sends every outbox entry not yet sent on this socket, oldest first. An entry
   * waiting out a retry delay holds back the ones after it, so order is kept.
   */
  function flushOutbox() {
    clearTimeout(state.flushTimer);
    state.flushTimer = 0;
    if (!state.helloSynced) return;
    const now = Date.now();
    for (const entry of state.outbox) {
      if (entry.sentOn === state.connSeq) continue;
      if (entry.retryAt && entry.retryAt > now) {
        state.flushTimer = setTimeout(flushOutbox, entry.retryAt - now);
        break;
      }
      entry.nick = state.serverNick || state.nick;
      if (!sendFrame({ type: 'send', room: entry.room, text: entry.text, clientOffset: entry.clientOffset })) break;
      entry.sentOn = state.connSeq;
      entry.retryAt = 0;
      setPendingStatus(entry, 'sending…');
    }
  }

  function retryDelay(tries) {
    return Math.min(3000 * 2 ** (tries - 1), 15000) + Math.random() * 500;
  }

  function handleSendError(entry, frame) {
    const reason = typeof frame.message === 'string' && frame.message ? frame.message : frame.code;
    if (RETRY_CODES.has(frame.code)) {
      entry.tries = (entry.tries || 0) + 1;
      entry.sentOn = 0;
      entry.retryAt = Date.now() + retryDelay(entry.tries);
      setPendingStatus(entry, frame.code === 'rate_limited' ? 'slowing down, will retry…' : 'server trouble, will retry…');
      if (state.helloSynced) flushOutbox();
      return;
    }
    dropFromOutbox(entry.clientOffset);
    markFailed(entry, reason);
  }

  function submitComposer() {
    const room = currentRoom();
    const text = dom.input.value;
    if (!room || BLANK_RE.test(text)) return;
    if (charCount(text) > state.limits.maxTextChars) {
      dom.counter.hidden = false;
      toast(`That message is too long: at most ${state.limits.maxTextChars} characters.`);
      return;
    }
    const entry = {
      clientOffset: newClientOffset(), room: room.name, text,
      nick: state.serverNick || state.nick, createdAt: Date.now(), sentOn: 0, retryAt: 0, tries: 0,
    };
    state.outbox.push(entry);
    saveOutbox();
    addPendingEl(room, entry);
    afterAppend(room, { jump: true });
    renderLogTop(room);
    dom.input.value = '';
    updateComposer();
    // The server clears the draft when the message arrives (and tells our other tabs).
    if (state.draftRoom === room) cancelDraftTimer();
    room.draftText = '';
    room.draftKnown = '';
    room.draftDirty = false;
    room.draftEditAt = Date.now();
    stopTyping();
    flushOutbox();
    renderStatus();
  }

  // ===========================================================================
  // 11. Connection: connect, hello, backoff, ping, status
  // ===========================================================================

  function wsUrl() {
    return `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`;
  }

  function connect() {
    clearTimeout(state.retryTimer);
    state.retryTimer = 0;
    if (state.ws || !state.nick || state.needToken || state.needNick) {
      renderStatus();
      return;
    }
    let ws;
    try {
      ws = new WebSocket(wsUrl());
    } catch {
      // e.g. the page was opened from a file: there is no host to talk to.
      scheduleReconnect();
      return;
    }
    state.ws = ws;
    state.connSeq++;
    state.welcomed = false;
    state.helloSynced = false;
    setConn('connecting');
    state.welcomeTimer = setTimeout(() => {
      if (state.ws === ws && !state.welcomed) dropSocket(ws);
    }, WELCOME_TIMEOUT_MS);

    ws.onopen = () => {
      if (state.ws !== ws) return;
      state.lastFrameAt = Date.now();
      sendHello();
    };
    ws.onmessage = (ev) => {
      if (state.ws !== ws) return;
      state.lastFrameAt = Date.now();
      handleFrameText(ev.data);
    };
    // An error is always followed by close; dropping at the first sign is enough.
    ws.onerror = () => { if (state.ws === ws) dropSocket(ws); };
    ws.onclose = () => { if (state.ws === ws) dropSocket(ws); };
  }

  function sendHello() {
    const stored = parseInt(store.get(KEY.offset), 10);
    if (Number.isSafeInteger(stored)) state.serverOffset = Math.max(state.serverOffset || 0, stored);
    const rooms = state.roomOrder.slice(0, MAX_ROOMS);
    const hello = { type: 'hello', nick: state.nick, rooms };
    if (state.serverOffset != null) hello.serverOffset = state.serverOffset;
    if (state.token) hello.token = state.token;
    state.helloRooms = new Set(rooms);
    state.helloOffset = state.serverOffset;
    sendFrame(hello);
  }

  /** Forgets the socket, closes it, and plans the next attempt. Safe to call twice. */
  function dropSocket(ws) {
    if (state.ws !== ws) return;
    teardownSocket();
    if (state.needToken || state.needNick) setConn('offline');
    else scheduleReconnect();
  }

  /** Closes the current socket and resets everything that belonged to it. */
  function teardownSocket() {
    const ws = state.ws;
    if (!ws) return;
    state.ws = null;
    ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
    try { ws.close(1000); } catch { /* already closed */ }
    clearTimeout(state.welcomeTimer);
    clearInterval(state.pingTimer);
    clearTimeout(state.flushTimer);
    state.pingTimer = 0;
    state.pingSentAt = 0;
    state.welcomed = false;
    state.helloSynced = false;
    state.historyRefs.clear();
    // Typing states ride on this socket: the server ends ours, theirs would never end.
    resetTypingOut();
    state.skew = null;
    for (const room of state.rooms.values()) {
      room.synced = false;
      room.joined = false;
      room.historyRef = null;
      renderLogTop(room);
      clearTypers(room);
      // Kept on screen, dimmed, until the next connection restates it.
      if (room.presence) room.presence.stale = true;
    }
    for (const entry of state.outbox) setPendingStatus(entry, 'waiting for connection…');
    renderPresence();
    renderTyping();
  }

  function scheduleReconnect() {
    clearTimeout(state.retryTimer);
    state.retryTimer = 0;
    if (navigator.onLine === false) {
      // The 'online' event brings us back; retrying into a dead network is pointless.
      setConn('offline');
      return;
    }
    // Exponential backoff with full jitter, so a restarted server is not stampeded.
    const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** state.attempt);
    const delay = Math.random() * ceiling;
    state.attempt = Math.min(state.attempt + 1, 20);
    state.retryAt = Date.now() + delay;
    state.retryTimer = setTimeout(() => {
      state.retryTimer = 0;
      connect();
    }, delay);
    setConn('reconnecting');
  }

  /** Skips the backoff wait: used by the retry button, 'online' and returning to the tab. */
  function reconnectNow() {
    if (state.ws) return;
    state.attempt = 0;
    connect();
  }

  /** Closes the current socket on purpose and connects again at once (new nick). */
  function restartConnection() {
    teardownSocket();
    state.attempt = 0;
    connect();
  }

  function startPing() {
    clearInterval(state.pingTimer);
    state.pingSentAt = 0;
    state.pingTimer = setInterval(() => {
      const ws = state.ws;
      if (!ws || !state.welcomed) return;
      // Nothing at all (not even the pong) since the last ping: the link is dead.
      if (state.pingSentAt && state.lastFrameAt < state.pingSentAt) {
        dropSocket(ws);
        return;
      }
      state.pingSentAt = Date.now();
      sendFrame({ type: 'ping' });
    }, PING_EVERY_MS);
  }

  function setConn(conn) {
    const changed = state.conn !== conn;
    state.conn = conn;
    clearInterval(state.countdownTimer);
    state.countdownTimer = 0;
    if (conn === 'reconnecting') state.countdownTimer = setInterval(renderStatus, 1000);
    renderStatus();
    if (changed) {
      const words = { connected: 'Connected.', connecting: 'Connecting…', reconnecting: 'Connection lost. Reconnecting.', offline: 'Offline.' };
      dom.announce.textContent = words[conn];
    }
  }

  function renderStatus() {
    const conn = state.conn;
    let text;
    if (conn === 'connected') text = 'Connected';
    else if (conn === 'connecting') text = 'Connecting…';
    else if (conn === 'reconnecting') {
      const secs = Math.max(1, Math.ceil((state.retryAt - Date.now()) / 1000));
      text = `Reconnecting in ${secs}s`;
    } else if (state.needToken) text = 'Access token needed';
    else if (state.needNick || !state.nick) text = 'Nickname needed';
    else text = 'Offline';

    const queued = state.outbox.length;
    if (queued) text += conn === 'connected' ? ` · sending ${queued}` : ` · ${queued} queued`;

    dom.status.dataset.state = conn;
    dom.connGroup.dataset.state = conn;
    dom.status.dataset.queued = String(queued);
    dom.statusText.textContent = text;
    dom.status.title = state.sessionId && conn === 'connected' ? `Session ${state.sessionId}` : '';

    if (conn === 'offline' && state.needToken) {
      dom.statusAction.textContent = 'Enter token';
      dom.statusAction.hidden = false;
    } else if (conn === 'offline' && (state.needNick || !state.nick)) {
      dom.statusAction.textContent = 'Choose nick';
      dom.statusAction.hidden = false;
    } else if (conn === 'reconnecting' || conn === 'offline') {
      dom.statusAction.textContent = 'Retry now';
      dom.statusAction.hidden = false;
    } else {
      dom.statusAction.hidden = true;
    }
  }

  function bumpServerOffset(n) {
    if (!Number.isSafeInteger(n) || n < 0) return;
    if (state.serverOffset != null && n <= state.serverOffset) return;
    state.serverOffset = n;
    // Another tab may have gone further; never write a smaller value.
    const stored = parseInt(store.get(KEY.offset), 10);
    if (!Number.isSafeInteger(stored) || stored < n) store.set(KEY.offset, String(n));
  }

  // ===========================================================================
  // 11b. Presence, typing and drafts (PROTOCOL.md sections 6 and 7)
  // ===========================================================================

  const ownNick = () => state.serverNick || state.nick;

  function roomOf(f) {
    return typeof f.room === 'string' ? state.rooms.get(f.room) || null : null;
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
    const me = ownNick();
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

  function presenceChanged(room) {
    renderSidebar();
    if (room.name === state.current) renderPresence();
  }

  /** Header presence line and the member panel's list (kept current while closed), for the room on screen. */
  function renderPresence() {
    const room = currentRoom();
    const p = room ? room.presence : null;
    dom.presenceLine.hidden = !p;
    if (!p) {
      dom.viewerCount.textContent = '';
      delete dom.viewerCount.dataset.count;
      dom.memberSummary.textContent = '';
      dom.memberList.replaceChildren();
      dom.memberList.dataset.count = '0';
      closeMemberPanel();
      return;
    }
    const people = p.members.size;
    const peopleText = `${people} ${people === 1 ? 'person' : 'people'}`;
    const summary = memberSummary(p);
    dom.presenceLine.dataset.stale = p.stale ? 'true' : 'false';
    dom.viewerCount.textContent = `${p.viewers} viewing`;
    dom.viewerCount.dataset.count = String(p.viewers);
    dom.memberSummary.textContent = summary;
    dom.presenceToggle.title = `${peopleText}, ${p.viewers} open ${p.viewers === 1 ? 'tab' : 'tabs'}${p.stale ? ' (reconnecting)' : ''}`;
    dom.presenceToggle.setAttribute('aria-label',
      `${p.viewers} viewing #${room.name}: ${summary}.${p.stale ? ' Reconnecting.' : ''} Show everyone here`);

    dom.memberPanelTitle.textContent = `People in #${room.name}`;
    dom.memberPanelSub.textContent = `${peopleText} · ${p.viewers} viewing`;
    const me = ownNick();
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
    dom.memberList.replaceChildren(...items);
    dom.memberList.dataset.count = String(people);
  }

  function openMemberPanel() {
    if (!currentRoom() || !currentRoom().presence) return;
    state.memberPanelOpen = true;
    dom.memberPanel.hidden = false;
    dom.presenceToggle.setAttribute('aria-expanded', 'true');
  }

  function closeMemberPanel({ focus = false } = {}) {
    if (!state.memberPanelOpen) return;
    state.memberPanelOpen = false;
    dom.memberPanel.hidden = true;
    dom.presenceToggle.setAttribute('aria-expanded', 'false');
    if (focus) dom.presenceToggle.focus();
  }

  // --- Typing: theirs ---

  function typingText(room) {
    const nicks = [...room.typers.keys()];
    if (nicks.length === 0) return '';
    if (nicks.length === 1) return `${nicks[0]} is typing…`;
    if (nicks.length === 2) return `${nicks[0]} and ${nicks[1]} are typing…`;
    return `${nicks.length} people are typing…`;
  }

  function renderTyping() {
    const room = currentRoom();
    const text = room ? typingText(room) : '';
    // Unchanged text is not touched, so renewals are not announced again.
    if (dom.typingLine.textContent !== text) dom.typingLine.textContent = text;
    dom.typingLine.dataset.count = String(room ? room.typers.size : 0);
    dom.roomMeta.dataset.typing = text ? 'true' : 'false';
  }

  let typingQuietTimer = 0;
  /** Switching rooms replaces the typing line; that is not news worth announcing. */
  function quietTypingLine() {
    dom.typingLine.setAttribute('aria-live', 'off');
    clearTimeout(typingQuietTimer);
    typingQuietTimer = setTimeout(() => dom.typingLine.setAttribute('aria-live', 'polite'), 300);
  }

  function setTyper(room, nick, active) {
    const old = room.typers.get(nick);
    if (old === undefined && !active) return;
    clearTimeout(old);
    if (active) {
      // Map.set keeps a renewed nick in its place, so the line does not reshuffle.
      const timer = setTimeout(() => {
        if (room.typers.get(nick) !== timer) return;
        room.typers.delete(nick);
        if (room.name === state.current) renderTyping();
      }, TYPING_EXPIRE_MS);
      room.typers.set(nick, timer);
    } else {
      room.typers.delete(nick);
    }
    if (room.name === state.current) renderTyping();
  }

  function clearTypers(room) {
    for (const timer of room.typers.values()) clearTimeout(timer);
    room.typers.clear();
  }

  // --- Typing: ours ---

  /** After a keystroke in the composer of `room`. */
  function noteTyping(room) {
    const out = state.typingOut;
    if (BLANK_RE.test(dom.input.value)) {
      stopTyping();
      return;
    }
    if (out.active && out.room !== room.name) stopTyping();
    const now = Date.now();
    if ((!out.active || now - out.lastSentAt >= TYPING_RENEW_MS) && room.joined &&
        sendFrame({ type: 'typing', room: room.name, active: true, ref: TYPING_REF })) {
      out.active = true;
      out.room = room.name;
      out.lastSentAt = now;
    }
    clearTimeout(out.idleTimer);
    out.idleTimer = setTimeout(stopTyping, TYPING_IDLE_MS);
  }

  /** Ends our typing state: input emptied, message sent, room switched, or idle. */
  function stopTyping() {
    const out = state.typingOut;
    if (out.active && out.room && state.rooms.has(out.room)) {
      sendFrame({ type: 'typing', room: out.room, active: false, ref: TYPING_REF });
    }
    resetTypingOut();
  }

  function resetTypingOut() {
    const out = state.typingOut;
    clearTimeout(out.idleTimer);
    out.idleTimer = 0;
    out.active = false;
    out.room = null;
    out.lastSentAt = 0;
  }

  // --- Drafts ---

  /** Our clock is compared with the server's updatedAt; estimate how far apart they are. */
  function noteServerTime(serverTs) {
    // serverTs happened before we received it, so this never overestimates.
    const sample = serverTs - Date.now();
    state.skew = state.skew == null ? sample : Math.max(state.skew, sample);
  }

  function composerTextOf(room) {
    return room.name === state.current ? dom.input.value : room.draftText;
  }

  /** Puts text in the composer with the caret at the end (no input event: nothing is re-sent). */
  function setInputText(text) {
    dom.input.value = text || '';
    const end = dom.input.value.length;
    try { dom.input.setSelectionRange(end, end); } catch { /* not focusable right now */ }
    updateComposer();
  }

  function setComposerTextOf(room, text) {
    if (room.name === state.current) setInputText(text);
    else room.draftText = text;
  }

  /** After a keystroke: the draft goes out 300 ms after the last one, and at least every second. */
  function scheduleDraft(room) {
    const now = Date.now();
    room.draftDirty = true;
    room.draftEditAt = now;
    if (state.draftRoom && state.draftRoom !== room) flushDraft();
    state.draftRoom = room;
    if (!state.draftSince) state.draftSince = now;
    clearTimeout(state.draftTimer);
    const wait = Math.max(0, Math.min(DRAFT_DEBOUNCE_MS, state.draftSince + DRAFT_MAX_WAIT_MS - now));
    state.draftTimer = setTimeout(flushDraft, wait);
  }

  function cancelDraftTimer() {
    clearTimeout(state.draftTimer);
    state.draftTimer = 0;
    state.draftSince = 0;
    state.draftRoom = null;
  }

  /** Sends the waiting draft now. */
  function flushDraft() {
    const room = state.draftRoom;
    cancelDraftTimer();
    if (room) pushDraft(room);
  }

  /** Tells the server the room's composer text, if it changed. Unsendable: stays dirty, retried on sync. */
  function pushDraft(room) {
    if (!room.draftDirty || state.rooms.get(room.name) !== room) return;
    const text = composerTextOf(room);
    if (text === room.draftKnown) {
      room.draftDirty = false;
      return;
    }
    // Over the limit the server answers too_long; the composer already shows the count in red.
    if (charCount(text) > state.limits.maxTextChars) return;
    // Before synced, the stored draft may still be on its way and would look newer.
    if (!room.joined || !room.synced) return;
    if (!sendFrame({ type: 'draft', room: room.name, text, ref: DRAFT_REF })) return;
    room.draftKnown = text;
    room.draftDirty = false;
  }

  function onComposerInput() {
    updateComposer();
    const room = currentRoom();
    if (!room) return;
    noteTyping(room);
    scheduleDraft(room);
    if (dom.input.value === '') flushDraft(); // cleared: say so at once
  }

  // ===========================================================================
  // 12. Server frames: one handler per frame type; unknown types are ignored
  // ===========================================================================

  const handlers = {
    welcome(f) {
      state.welcomed = true;
      state.attempt = 0;
      clearTimeout(state.welcomeTimer);
      state.sessionId = typeof f.sessionId === 'string' ? f.sessionId : null;
      if (typeof f.nick === 'string') state.serverNick = f.nick;
      // Drafts are kept per nick: after a nick change, nothing we knew applies, and
      // whatever is in the composers becomes the new nick's drafts.
      const nick = state.serverNick || state.nick;
      if (state.draftNick != null && state.draftNick !== nick) {
        for (const room of state.rooms.values()) {
          room.draftKnown = '';
          room.draftDirty = composerTextOf(room) !== '';
        }
      }
      state.draftNick = nick;
      const limits = f.limits && typeof f.limits === 'object' ? f.limits : {};
      for (const key of ['maxTextChars', 'maxFrameBytes', 'sendsPer10s']) {
        if (Number.isSafeInteger(limits[key]) && limits[key] >= 0) state.limits[key] = limits[key];
      }
      const floor = state.helloOffset != null ? state.helloOffset : f.serverOffset;
      state.unreadFloor = Number.isSafeInteger(floor) ? floor : 0;
      setConn('connected');
      startPing();
      updateComposer();
      // Rooms joined or left while the hello was on its way.
      for (const name of state.roomOrder) {
        if (!state.helloRooms.has(name)) sendJoin(state.rooms.get(name));
      }
      for (const name of state.helloRooms) {
        if (!state.rooms.has(name)) sendFrame({ type: 'leave', room: name });
      }
    },

    joined(f) {
      if (typeof f.room !== 'string' || !ROOM_RE.test(f.room)) return;
      let room = state.rooms.get(f.room);
      if (!room) {
        // The server put us in a room we do not show; show it rather than hide messages.
        room = createRoom(f.room);
        state.roomOrder.push(f.room);
        saveRooms();
        if (!state.current) switchRoom(f.room);
        renderSidebar();
      }
      room.joined = true;
      room.fresh = false;
      rememberRoom(f.room);
    },

    message(f) {
      if (!isMessage(f)) return;
      // Before the hello's `synced`, rooms are replayed one after another, so
      // a newer id of one room can come before an older one of the next: the
      // offset moves only with `synced`, then with every live message (the
      // server keeps one id order after that).
      if (state.helloSynced) bumpServerOffset(f.id);
      const room = typeof f.room === 'string' ? state.rooms.get(f.room) : null;
      if (!room) {
        if (f.clientOffset) dropFromOutbox(f.clientOffset);
        return;
      }
      setTyper(room, f.nick, false); // their message is what they were typing
      const own = isOwn(f.nick, f.clientOffset);
      const li = insertConfirmed(room, f);
      if (f.clientOffset) dropFromOutbox(f.clientOffset);
      if (!li) return;
      const isLast = room.records[room.records.length - 1].el === li;
      if (room.name !== state.current) {
        if (!own && f.id > Math.max(state.unreadFloor, room.floor)) {
          room.unread++;
          renderSidebar();
        }
      } else if (isLast) {
        afterAppend(room, { quiet: own });
      }
      if (room.hasMore === false && room.records.length === 1) renderLogTop(room);
    },

    ack(f) {
      if (typeof f.clientOffset !== 'string') return;
      if (Number.isFinite(f.ts)) noteServerTime(f.ts);
      const entry = dropFromOutbox(f.clientOffset);
      if (!entry || !Number.isSafeInteger(f.id)) return;
      const room = state.rooms.get(entry.room);
      if (!room) return;
      insertConfirmed(room, {
        id: f.id, room: entry.room, nick: entry.nick, text: entry.text,
        ts: Number.isFinite(f.ts) ? f.ts : Date.now(), clientOffset: entry.clientOffset,
      });
    },

    synced(f) {
      if (Number.isSafeInteger(f.serverOffset)) bumpServerOffset(f.serverOffset);
      const names = Array.isArray(f.rooms) ? f.rooms : [];
      const synced = [];
      for (const name of names) {
        const room = state.rooms.get(name);
        if (!room) continue;
        room.synced = true;
        synced.push(room);
        renderLogTop(room);
      }
      if (!state.helloSynced) {
        state.helloSynced = true;
        flushOutbox();
      }
      // Text typed while away goes out now: after the queued sends, which clear drafts.
      for (const room of synced) pushDraft(room);
      maybeFillHistory(currentRoom());
    },

    history(f) {
      const name = state.historyRefs.get(f.ref);
      if (name === undefined) return;
      state.historyRefs.delete(f.ref);
      const room = state.rooms.get(name);
      if (!room || room.historyRef !== f.ref) return;
      room.historyRef = null;

      const visible = room.name === state.current;
      const log = room.log;
      const anchor = visible && !room.stick ? { height: log.scrollHeight, top: log.scrollTop } : null;
      // Old messages are not news: keep screen readers from reading a whole page of them.
      log.setAttribute('aria-live', 'off');
      clearTimeout(room.liveTimer);
      room.liveTimer = setTimeout(() => log.setAttribute('aria-live', 'polite'), 300);
      // History only ever shows older messages: it never moves serverOffset.
      for (const m of Array.isArray(f.messages) ? f.messages : []) {
        if (isMessage(m)) insertConfirmed(room, m);
      }
      room.hasMore = f.hasMore === true;
      renderLogTop(room);
      if (visible) {
        if (anchor) log.scrollTop = anchor.top + (log.scrollHeight - anchor.height);
        else scrollToBottom(room);
        maybeFillHistory(room);
      }
    },

    left() {
      // Only ever the answer to our own leave, and the room left the UI when the
      // user clicked. If they joined it again meanwhile, the room must stay.
    },

    pong() { /* liveness only: lastFrameAt was updated on receipt */ },

    /** Full presence state of a room: on join, after a reconnect, after lag. */
    presence(f) {
      const room = roomOf(f);
      if (!room || !Array.isArray(f.members)) return;
      const members = new Map();
      for (const m of f.members) {
        if (!m || typeof m.nick !== 'string') continue;
        members.set(m.nick, Number.isSafeInteger(m.connections) && m.connections >= 0 ? m.connections : null);
      }
      const p = { viewers: 0, members, stale: false };
      p.viewers = Number.isSafeInteger(f.viewers) && f.viewers >= 0 ? f.viewers : countedViewers(p);
      room.presence = p;
      for (const nick of [...room.typers.keys()]) {
        if (!members.has(nick)) setTyper(room, nick, false);
      }
      presenceChanged(room);
    },

    /** Changes since the last presence frame; viewers is absolute, joins/leaves are nicks. */
    presence_diff(f) {
      const room = roomOf(f);
      if (!room || !room.presence) return;
      const p = room.presence;
      for (const nick of Array.isArray(f.leaves) ? f.leaves : []) {
        if (typeof nick !== 'string') continue;
        p.members.delete(nick);
        setTyper(room, nick, false);
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
      presenceChanged(room);
    },

    typing(f) {
      const room = roomOf(f);
      if (!room || typeof f.nick !== 'string' || f.nick === ownNick()) return;
      setTyper(room, f.nick, f.active === true);
    },

    /**
     * Our draft for a room: the stored one on hello/join (before synced), or an
     * edit from another tab of ours (after synced).
     */
    draft(f) {
      const room = roomOf(f);
      if (!room || typeof f.text !== 'string') return;
      const text = f.text;
      const updatedAt = Number.isFinite(f.updatedAt) ? f.updatedAt : null;
      const live = room.synced;
      if (live && updatedAt != null) noteServerTime(updatedAt);
      // A stored draft while sends to this room are still queued: those sends were
      // typed from it, and delivering them clears it on the server.
      if (!live && state.outbox.some((e) => e.room === room.name)) return;

      const prevKnown = room.draftKnown;
      const local = composerTextOf(room);
      if (room.draftDirty) {
        // Edits made here that the server has not seen yet win; they go out next.
        room.draftKnown = text;
        return;
      }
      if (text === '') {
        // Sent or cleared elsewhere. Only wipe what we still show of the old draft.
        room.draftKnown = '';
        if (local === prevKnown) setComposerTextOf(room, '');
        else if (local !== '') {
          room.draftDirty = true;
          pushDraft(room);
        }
        return;
      }
      const editingHere = room.name === state.current && document.activeElement === dom.input;
      if (editingHere && updatedAt != null && room.draftEditAt + (state.skew || 0) > updatedAt) {
        return; // typed here after that draft was saved: the server already has our newer text
      }
      room.draftKnown = text;
      if (local !== text) setComposerTextOf(room, text);
    },

    error(f) {
      const code = typeof f.code === 'string' ? f.code : 'error';
      const message = typeof f.message === 'string' && f.message ? f.message : code;
      const ref = typeof f.ref === 'string' ? f.ref : null;

      // Typing and drafts are best effort (e.g. not_joined while a join is on its way).
      if (ref === TYPING_REF || ref === DRAFT_REF) return;

      if (code === 'unauthorized') {
        // The server closes the socket next; wait for the user instead of retrying.
        const hadToken = !!state.token;
        state.token = null;
        store.remove(KEY.token);
        state.needToken = true;
        if (state.ws) dropSocket(state.ws);
        openTokenDialog(hadToken);
        return;
      }
      if (ref) {
        const entry = state.outbox.find((e) => e.clientOffset === ref);
        if (entry) {
          handleSendError(entry, f);
          return;
        }
        const roomName = state.historyRefs.get(ref);
        if (roomName !== undefined) {
          state.historyRefs.delete(ref);
          const room = state.rooms.get(roomName);
          if (room && room.historyRef === ref) {
            room.historyRef = null;
            room.historyPausedUntil = Date.now() + HISTORY_ERROR_PAUSE_MS;
            renderLogTop(room);
          }
          toast(`Could not load older messages: ${message}`);
          return;
        }
      }
      if (code === 'invalid_nick' && !state.welcomed) {
        state.needNick = true;
        if (state.ws) dropSocket(state.ws);
        openNickDialog({ first: false, error: `The server did not accept this nickname: ${message}` });
        return;
      }
      toast(message);
    },
  };

  function handleFrameText(data) {
    if (typeof data !== 'string') return;
    let frame;
    try { frame = JSON.parse(data); } catch { return; }
    if (!frame || typeof frame !== 'object' || typeof frame.type !== 'string') return;
    if (!Object.prototype.hasOwnProperty.call(handlers, frame.type)) return; // newer frame types
    try {
      handlers[frame.type](frame);
    } catch (err) {
      console.error(`natter: failed to handle "${frame.type}" frame`, err);
    }
  }

  // ===========================================================================
  // 13. Dialogs, drawer and toasts
  // ===========================================================================

  let nickDialogFirst = false;

  function openNickDialog({ first, error } = {}) {
    nickDialogFirst = !!first;
    dom.nickTitle.textContent = first ? 'Welcome to natter' : 'Change your nickname';
    dom.nickDesc.textContent = first
      ? 'Pick a nickname. It is shown next to everything you write.'
      : 'Your new nickname is used for messages you send from now on.';
    dom.nickSubmit.textContent = first ? 'Start chatting' : 'Save';
    dom.nickCancel.hidden = !!first;
    dom.nickInput.value = state.nick || '';
    setFieldError(dom.nickInput, dom.nickError, error);
    if (!dom.nickDialog.open) dom.nickDialog.showModal();
    dom.nickInput.focus();
    dom.nickInput.select();
  }

  function onNickSubmit(ev) {
    ev.preventDefault();
    const result = checkNick(dom.nickInput.value);
    if (result.error) {
      setFieldError(dom.nickInput, dom.nickError, result.error);
      dom.nickInput.focus();
      return;
    }
    const changed = result.nick !== state.nick || state.needNick;
    state.nick = result.nick;
    store.set(KEY.nick, state.nick);
    state.serverNick = null;
    state.needNick = false;
    dom.nickDialog.close();
    renderMe();
    if (changed) restartConnection();
    else connect();
    dom.input.focus();
  }

  function openTokenDialog(rejected) {
    dom.tokenDesc.textContent = rejected
      ? 'That access token was not accepted. Check it and try again.'
      : 'This server is private. Enter the access token you were given.';
    dom.tokenInput.value = '';
    setFieldError(dom.tokenInput, dom.tokenError, '');
    if (!dom.tokenDialog.open) dom.tokenDialog.showModal();
    dom.tokenInput.focus();
  }

  function onTokenSubmit(ev) {
    ev.preventDefault();
    const token = dom.tokenInput.value.trim();
    if (!token) {
      setFieldError(dom.tokenInput, dom.tokenError, 'Please enter the token.');
      return;
    }
    state.token = token;
    store.set(KEY.token, token);
    state.needToken = false;
    dom.tokenDialog.close();
    reconnectNow();
  }

  function renderMe() {
    dom.meNick.textContent = state.nick || 'no nickname yet';
    paintAvatar(dom.meAvatar, state.nick || '?');
  }

  function openDrawer() {
    dom.app.classList.add('drawer-open');
    dom.backdrop.hidden = false;
    dom.drawerOpen.setAttribute('aria-expanded', 'true');
    dom.main.inert = true; // keep keyboard focus inside the open drawer
    const active = currentRoom();
    (active ? active.navBtn : dom.joinInput).focus();
  }

  function closeDrawer() {
    if (!dom.app.classList.contains('drawer-open')) return;
    dom.app.classList.remove('drawer-open');
    dom.backdrop.hidden = true;
    dom.drawerOpen.setAttribute('aria-expanded', 'false');
    dom.main.inert = false;
  }

  function toast(message, { kind = 'error' } = {}) {
    const text = el('span', { class: 'toast-text' }, message);
    const close = el('button', { type: 'button', class: 'toast-close', 'aria-label': 'Dismiss' }, '×');
    const node = el('div', { class: `toast toast-${kind}`, role: kind === 'error' ? 'alert' : 'status' }, text, close);
    const remove = () => node.remove();
    close.addEventListener('click', remove);
    setTimeout(remove, TOAST_MS);
    dom.toasts.appendChild(node);
    while (dom.toasts.children.length > 3) dom.toasts.firstElementChild.remove();
  }

  // ===========================================================================
  // 14. Composer
  // ===========================================================================

  function updateComposer() {
    const room = currentRoom();
    dom.input.disabled = !room;
    dom.input.placeholder = room ? `Message #${room.name}` : 'Join a room to chat';
    // Grow with the text, up to the CSS max-height.
    dom.input.style.height = 'auto';
    dom.input.style.height = `${dom.input.scrollHeight}px`;

    const max = state.limits.maxTextChars;
    const len = charCount(dom.input.value);
    const near = max > 0 && len >= Math.floor(max * 0.8);
    dom.counter.hidden = !near;
    dom.counter.textContent = near ? `${len} / ${max}` : '';
    dom.counter.classList.toggle('over', len > max);
    const unusable = !room || BLANK_RE.test(dom.input.value) || len > max;
    dom.sendBtn.setAttribute('aria-disabled', unusable ? 'true' : 'false');
  }

  function onComposerKey(ev) {
    if (ev.key !== 'Enter' || ev.shiftKey || ev.isComposing || ev.keyCode === 229) return;
    ev.preventDefault();
    submitComposer();
  }

  // ===========================================================================
  // 15. Start-up
  // ===========================================================================

  function loadState() {
    const nick = store.get(KEY.nick);
    state.nick = nick && !checkNick(nick).error ? checkNick(nick).nick : null;
    state.token = store.get(KEY.token) || null;

    state.devicePrefix = store.get(KEY.device);
    if (!state.devicePrefix || !/^[a-z0-9]{4,32}$/.test(state.devicePrefix)) {
      state.devicePrefix = randomPrefix();
      store.set(KEY.device, state.devicePrefix);
    }
    const counter = parseInt(store.get(KEY.counter), 10);
    state.sendCounter = Number.isSafeInteger(counter) ? counter : 0;

    const offset = parseInt(store.get(KEY.offset), 10);
    state.serverOffset = Number.isSafeInteger(offset) && offset >= 0 ? offset : null;

    const known = store.getJSON(KEY.known, []);
    state.knownRooms = new Set(Array.isArray(known) ? known.filter((r) => typeof r === 'string' && ROOM_RE.test(r)) : []);

    let rooms = store.getJSON(KEY.rooms, null);
    if (!Array.isArray(rooms)) rooms = DEFAULT_ROOMS;
    rooms = [...new Set(rooms.filter((r) => typeof r === 'string' && ROOM_RE.test(r)))].slice(0, MAX_ROOMS);
    state.roomOrder = rooms;
    for (const name of rooms) createRoom(name, { fresh: !state.knownRooms.has(name) });

    // Unacknowledged sends from an earlier visit come back as pending.
    const outbox = store.getJSON(KEY.outbox, []);
    state.outbox = (Array.isArray(outbox) ? outbox : []).filter((e) => e && typeof e.clientOffset === 'string' &&
      typeof e.text === 'string' && typeof e.room === 'string' && state.rooms.has(e.room))
      .map((e) => ({
        clientOffset: e.clientOffset, room: e.room, text: e.text,
        nick: typeof e.nick === 'string' ? e.nick : (state.nick || ''),
        createdAt: Number.isFinite(e.createdAt) ? e.createdAt : Date.now(), sentOn: 0, retryAt: 0, tries: 0,
      }));
    for (const entry of state.outbox) addPendingEl(state.rooms.get(entry.room), entry);
    saveOutbox();

    const current = store.get(KEY.current);
    const start = state.rooms.has(current) ? current : state.roomOrder[0];
    if (start) switchRoom(start);
  }

  function bindEvents() {
    dom.composer.addEventListener('submit', (ev) => {
      ev.preventDefault();
      submitComposer();
      dom.input.focus();
    });
    dom.input.addEventListener('keydown', onComposerKey);
    dom.input.addEventListener('input', onComposerInput);
    // A reload right after typing must not lose the last keystrokes' draft.
    window.addEventListener('pagehide', (ev) => {
      flushDraft();
      stopTyping();
      // A page kept in the back/forward cache would keep its socket, and so look
      // present in every room, until the user comes back. Go, and return with it.
      if (ev.persisted && state.ws) teardownSocket();
    });
    window.addEventListener('pageshow', (ev) => {
      if (ev.persisted) reconnectNow();
    });

    dom.presenceToggle.addEventListener('click', () => {
      if (state.memberPanelOpen) closeMemberPanel();
      else openMemberPanel();
    });
    dom.memberPanelClose.addEventListener('click', () => closeMemberPanel({ focus: true }));
    document.addEventListener('pointerdown', (ev) => {
      if (state.memberPanelOpen && !dom.memberPanel.contains(ev.target) && !dom.presenceToggle.contains(ev.target)) {
        closeMemberPanel();
      }
    });
    dom.memberPanel.addEventListener('focusout', (ev) => {
      // Tabbing away from the panel (not into the toggle) closes it.
      const to = ev.relatedTarget;
      if (to && !dom.memberPanel.contains(to) && to !== dom.presenceToggle) closeMemberPanel();
    });

    dom.joinForm.addEventListener('submit', (ev) => {
      ev.preventDefault();
      const raw = dom.joinInput.value;
      const name = toRoomName(raw);
      if (!name) {
        setFieldError(dom.joinInput, dom.joinError, raw.trim()
          ? 'Use 1–64 lowercase letters, digits, “-” or “_”, starting with a letter or digit.'
          : 'Type a room name first.');
        dom.joinInput.focus();
        return;
      }
      if (joinRoom(name)) {
        dom.joinInput.value = '';
        setFieldError(dom.joinInput, dom.joinError, '');
        closeDrawer();
        dom.input.focus();
      }
    });
    dom.joinInput.addEventListener('input', () => setFieldError(dom.joinInput, dom.joinError, ''));

    dom.leaveBtn.addEventListener('click', () => { if (state.current) leaveRoom(state.current); });
    dom.pill.addEventListener('click', () => {
      const room = currentRoom();
      if (room) scrollToBottom(room);
      renderPill();
      dom.input.focus();
    });

    dom.changeNick.addEventListener('click', () => {
      closeDrawer();
      openNickDialog({ first: false });
    });
    dom.nickForm.addEventListener('submit', onNickSubmit);
    dom.nickInput.addEventListener('input', () => setFieldError(dom.nickInput, dom.nickError, ''));
    dom.nickCancel.addEventListener('click', () => dom.nickDialog.close());
    dom.nickDialog.addEventListener('cancel', (ev) => {
      // Without a nick there is nothing to fall back to.
      if (nickDialogFirst || !state.nick || state.needNick) ev.preventDefault();
    });

    dom.tokenForm.addEventListener('submit', onTokenSubmit);
    dom.tokenCancel.addEventListener('click', () => dom.tokenDialog.close());

    dom.statusAction.addEventListener('click', () => {
      if (state.needToken) openTokenDialog(false);
      else if (state.needNick || !state.nick) openNickDialog({ first: !state.nick });
      else reconnectNow();
    });

    dom.drawerOpen.addEventListener('click', openDrawer);
    dom.drawerClose.addEventListener('click', () => { closeDrawer(); dom.drawerOpen.focus(); });
    dom.backdrop.addEventListener('click', closeDrawer);

    document.addEventListener('keydown', (ev) => {
      if (ev.key === 'Escape' && state.memberPanelOpen) {
        const inside = dom.memberPanel.contains(document.activeElement) || document.activeElement === dom.presenceToggle;
        closeMemberPanel({ focus: inside });
        return;
      }
      if (ev.key === 'Escape' && dom.app.classList.contains('drawer-open')) {
        closeDrawer();
        dom.drawerOpen.focus();
        return;
      }
      // Alt+Up / Alt+Down walk through the rooms from anywhere.
      if (ev.altKey && (ev.key === 'ArrowUp' || ev.key === 'ArrowDown') && state.roomOrder.length > 1) {
        ev.preventDefault();
        const i = state.roomOrder.indexOf(state.current);
        const step = ev.key === 'ArrowUp' ? -1 : 1;
        const next = state.roomOrder[(i + step + state.roomOrder.length) % state.roomOrder.length];
        switchRoom(next);
      }
    });

    // A network change kills sockets silently (no close frame reaches us), so
    // waiting for the ping check would leave sends hanging for half a minute:
    // drop the socket when the browser says it is offline, and start a fresh
    // one when it is back.
    window.addEventListener('online', () => {
      if (state.ws) restartConnection();
      else reconnectNow();
    });
    window.addEventListener('offline', () => {
      teardownSocket();
      clearTimeout(state.retryTimer);
      state.retryTimer = 0;
      setConn('offline');
    });
    document.addEventListener('visibilitychange', () => {
      if (document.visibilityState === 'visible' && !state.ws && state.conn !== 'connecting') reconnectNow();
    });
    window.addEventListener('resize', () => {
      if (!isNarrow()) closeDrawer();
      const room = currentRoom();
      if (room && room.stick) scrollToBottom(room);
    });
  }

  function start() {
    loadState();
    bindEvents();
    renderMe();
    renderSidebar();
    renderRoomHeader();
    updateComposer();
    renderStatus();
    if (state.nick) connect();
    else {
      setConn('offline');
      openNickDialog({ first: true });
    }
  }

  start();
})();
