/*
 * dom.js: the helpers every view uses, and the page's one rendering rule:
 * data from the server or the user reaches the DOM only as text
 * (textContent, or text nodes made by el()), never as parsed HTML. No module
 * uses innerHTML, outerHTML, insertAdjacentHTML or document.write.
 *
 * Owns: the toasts (#toasts).
 * May not touch: any module's state. It finds elements for the modules that
 * own them ($), and moves focus to the composer, where most actions end.
 */

const TOAST_MS = 8000;

export const $ = (id) => document.getElementById(id);

const toasts = $('toasts');

/** Creates an element. Attributes are set verbatim; string children become text nodes. */
export function el(tag, attrs, ...children) {
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

export function setFieldError(input, errorEl, message) {
  errorEl.textContent = message || '';
  errorEl.hidden = !message;
  if (message) input.setAttribute('aria-invalid', 'true');
  else input.removeAttribute('aria-invalid');
}

export const isNarrow = () => window.matchMedia('(max-width: 720px)').matches;

export function focusComposer() {
  $('message-input').focus();
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

export function paintAvatar(node, nick) {
  node.textContent = initials(nick);
  node.style.setProperty('--avatar-h', String(hashString(nick) % 360));
}

export function toast(message, { kind = 'error' } = {}) {
  const text = el('span', { class: 'toast-text' }, message);
  const close = el('button', { type: 'button', class: 'toast-close', 'aria-label': 'Dismiss' }, '×');
  const node = el('div', { class: `toast toast-${kind}`, role: kind === 'error' ? 'alert' : 'status' }, text, close);
  const remove = () => node.remove();
  close.addEventListener('click', remove);
  setTimeout(remove, TOAST_MS);
  toasts.appendChild(node);
  while (toasts.children.length > 3) toasts.firstElementChild.remove();
}
