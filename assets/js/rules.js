/*
 * rules.js: the protocol's rules for nicks, room names and message text, as
 * the server checks them (docs/protocol.md sections 2 and 3), and the shape
 * of a message the page is willing to show.
 *
 * Owns: constants and pure functions only; no state.
 * May not touch: the DOM, storage, the socket.
 */

export const ROOM_RE = /^[a-z0-9][a-z0-9_-]{0,63}$/;
export const DEFAULT_ROOMS = ['general'];
export const MAX_ROOMS = 50;                 // protocol limit per connection
const MAX_NICK_CHARS = 32;

// Unicode White_Space, which is what the server trims and calls "empty".
// (JS \s differs: it includes U+FEFF and lacks U+0085.)
const WS = '\\t\\n\\v\\f\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000';
const TRIM_RE = new RegExp(`^[${WS}]+|[${WS}]+$`, 'g');
const BLANK_RE = new RegExp(`^[${WS}]*$`);
const CONTROL_RE = /[\u0000-\u001f\u007f-\u009f]/;

/** Nothing but white space: the server would answer `empty`. */
export function isBlank(text) {
  return BLANK_RE.test(text);
}

/** Length in Unicode scalar values, as the server counts. */
export function charCount(s) {
  let n = 0;
  for (const _ of s) n++; // eslint-disable-line no-unused-vars
  return n;
}

/** Returns {nick} or {error} following the protocol's nick rules. */
export function checkNick(raw) {
  const nick = String(raw).replace(TRIM_RE, '');
  if (!nick) return { error: 'Please enter a nickname.' };
  if (charCount(nick) > MAX_NICK_CHARS) return { error: `At most ${MAX_NICK_CHARS} characters, please.` };
  if (CONTROL_RE.test(nick)) return { error: 'The nickname contains a control character.' };
  return { nick };
}

/** Normalises what the user typed into a room name, or returns null. */
export function toRoomName(raw) {
  const name = String(raw).replace(TRIM_RE, '').replace(/^#/, '').toLowerCase();
  return ROOM_RE.test(name) ? name : null;
}

export function isMessage(m) {
  return m && typeof m === 'object' && Number.isSafeInteger(m.id) &&
    typeof m.nick === 'string' && typeof m.text === 'string' && Number.isFinite(m.ts);
}
