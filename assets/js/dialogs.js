/*
 * dialogs.js: asking the user for a nickname (first visit, a change, or one
 * the server refused) and for the access token of a private server, and the
 * "Chatting as" corner that shows the nick.
 *
 * Owns: #nick-dialog, #token-dialog, #me-avatar, #me-nick, #change-nick-btn.
 * May not touch: the socket itself (it asks connection.js to connect,
 * reconnect or restart), rooms, messages.
 */

import * as connection from './connection.js';
import * as identity from './identity.js';
import * as rooms from './rooms.js';
import { $, focusComposer, paintAvatar, setFieldError } from './dom.js';
import { checkNick } from './rules.js';

const meAvatar = $('me-avatar');
const meNick = $('me-nick');
const changeNick = $('change-nick-btn');
const nickDialog = $('nick-dialog');
const nickForm = $('nick-form');
const nickTitle = $('nick-title');
const nickDesc = $('nick-desc');
const nickInput = $('nick-input');
const nickError = $('nick-error');
const nickCancel = $('nick-cancel');
const nickSubmit = $('nick-submit');
const tokenDialog = $('token-dialog');
const tokenForm = $('token-form');
const tokenDesc = $('token-desc');
const tokenInput = $('token-input');
const tokenError = $('token-error');
const tokenCancel = $('token-cancel');

let nickDialogFirst = false;

export function openNickDialog({ first, error } = {}) {
  nickDialogFirst = !!first;
  nickTitle.textContent = first ? 'Welcome to natter' : 'Change your nickname';
  nickDesc.textContent = first
    ? 'Pick a nickname. It is shown next to everything you write.'
    : 'Your new nickname is used for messages you send from now on.';
  nickSubmit.textContent = first ? 'Start chatting' : 'Save';
  nickCancel.hidden = !!first;
  nickInput.value = identity.getNick() || '';
  setFieldError(nickInput, nickError, error);
  if (!nickDialog.open) nickDialog.showModal();
  nickInput.focus();
  nickInput.select();
}

function onNickSubmit(ev) {
  ev.preventDefault();
  const result = checkNick(nickInput.value);
  if (result.error) {
    setFieldError(nickInput, nickError, result.error);
    nickInput.focus();
    return;
  }
  const changed = result.nick !== identity.getNick() || identity.needsNick();
  identity.setNick(result.nick);
  nickDialog.close();
  renderMe();
  if (changed) connection.restart();
  else connection.connect();
  focusComposer();
}

export function openTokenDialog(rejected) {
  tokenDesc.textContent = rejected
    ? 'That access token was not accepted. Check it and try again.'
    : 'This server is private. Enter the access token you were given.';
  tokenInput.value = '';
  setFieldError(tokenInput, tokenError, '');
  if (!tokenDialog.open) tokenDialog.showModal();
  tokenInput.focus();
}

function onTokenSubmit(ev) {
  ev.preventDefault();
  const token = tokenInput.value.trim();
  if (!token) {
    setFieldError(tokenInput, tokenError, 'Please enter the token.');
    return;
  }
  identity.setToken(token);
  tokenDialog.close();
  connection.reconnectNow();
}

export function renderMe() {
  const nick = identity.getNick();
  meNick.textContent = nick || 'no nickname yet';
  paintAvatar(meAvatar, nick || '?');
}

export function init() {
  changeNick.addEventListener('click', () => {
    rooms.closeDrawer();
    openNickDialog({ first: false });
  });
  nickForm.addEventListener('submit', onNickSubmit);
  nickInput.addEventListener('input', () => setFieldError(nickInput, nickError, ''));
  nickCancel.addEventListener('click', () => nickDialog.close());
  nickDialog.addEventListener('cancel', (ev) => {
    // Without a nick there is nothing to fall back to.
    if (nickDialogFirst || !identity.getNick() || identity.needsNick()) ev.preventDefault();
  });
  tokenForm.addEventListener('submit', onTokenSubmit);
  tokenCancel.addEventListener('click', () => tokenDialog.close());
}
