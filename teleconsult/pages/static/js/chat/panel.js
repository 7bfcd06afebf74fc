// A chat panel for one thread: the history (by seq), what is still unsent (marked, and
// retried by the client), and a box to write in. What a person typed is kept in the box
// until the message is queued; queued messages survive reloads (chat/store.js).
import { t } from '../i18n.js';
import { el, formatTime, replace } from '../ui.js';

export function chatPanel(root, { client, threadId, names = {} }) {
  const log = el('ol', { class: 'chat-log chat-history', 'aria-live': 'polite', 'aria-label': t('chat.history') });
  const pending = el('ol', { class: 'chat-log chat-unsent', 'aria-label': t('chat.unsent_list') });
  const box = el('textarea', { id: `chat-input-${threadId}`, rows: 2, maxlength: 4000, class: 'chat-input' });
  const label = el('label', { for: box.id }, t('chat.write'));
  const send = el('button', { type: 'submit', class: 'primary' }, t('chat.send'));
  const form = el('form', { class: 'chat-form' }, label, box, send);
  const state = el('p', { class: 'chat-state muted' });
  replace(root, el('h2', { class: 'chat-title' }, t('chat.title')), state, log, pending, form);
  const messages = new Map();

  const who = (m) => (m.mine ? t('chat.me') : names[m.senderUserId] ?? t('chat.them'));

  function render() {
    const items = [...messages.values()].sort((a, b) => a.seq - b.seq).map((m) => el(
      'li', { class: m.mine ? 'chat-msg mine' : 'chat-msg', dataset: { seq: m.seq } },
      el('span', { class: 'chat-who' }, who(m)), ' ',
      el('time', { datetime: m.createdAt }, m.createdAt ? formatTime(m.createdAt) : ''), ' ',
      m.error
        ? el('span', { class: 'chat-error' }, t('chat.unreadable'))
        : el('span', { class: 'chat-text' }, m.text),
    ));
    replace(log, items);
    log.scrollTop = log.scrollHeight;
  }

  const onMessage = (e) => {
    if (e.detail.threadId !== threadId) return;
    messages.set(e.detail.seq, e.detail);
    render();
  };
  const onOutbox = (e) => {
    replace(pending, e.detail.items.filter((i) => i.threadId === threadId).map((i) => el(
      'li', { class: `chat-msg mine ${i.status}`, dataset: { clientMsgId: i.clientMsgId } },
      el('span', { class: 'chat-text' }, i.text), ' ',
      el('span', { class: 'badge' }, i.status === 'failed' ? t('chat.failed', { code: i.code }) : t('chat.unsent')),
    )));
  };
  const onState = (e) => {
    state.textContent = e.detail.connected ? '' : t('chat.offline');
  };
  client.addEventListener('message', onMessage);
  client.addEventListener('outbox', onOutbox);
  client.addEventListener('state', onState);
  client.emitOutbox();

  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const text = box.value.trim();
    if (!text) return;
    send.disabled = true;
    try {
      await client.send(threadId, text);
      box.value = '';
    } catch {
      state.textContent = t('chat.not_queued');
    } finally {
      send.disabled = false;
      box.focus();
    }
  });
  box.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey) { e.preventDefault(); form.requestSubmit(); }
  });
  client.follow(threadId);
  return {
    messages,
    destroy() {
      client.removeEventListener('message', onMessage);
      client.removeEventListener('outbox', onOutbox);
      client.removeEventListener('state', onState);
    },
  };
}
