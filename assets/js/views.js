/*
 * views.js: what one message looks like: its element (avatar, nick, "you",
 * time, text), its time stamps, and its day separator and grouping with the
 * message before it.
 *
 * Owns: no state; it builds and decorates elements that messages.js places.
 * May not touch: the message lists, the socket, storage.
 */

import { el, paintAvatar } from './dom.js';

const GROUP_WINDOW_MS = 5 * 60 * 1000;

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

/** `own`: written by us (this device's clientOffset, or our nick). */
export function buildMessageEl({ id, nick, text, ts, clientOffset }, own) {
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

export function setMessageTime(li, ts) {
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
export function decorate(li, rec, prev) {
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
