// doctor.html: the day's consultations, everyone knocking (all at once, with their network
// check, a sound and a badge), admit / decline with a message / remove / invite, the call
// with its chat, and a note afterwards (docs/room.md).
import { api } from '../api.js';
import { ChatClient } from '../chat/client.js';
import { chatPanel } from '../chat/panel.js';
import { t } from '../i18n.js';
import { startPage } from '../shell.js';
import { el, errorText, formatTime, replace, submitting, toast } from '../ui.js';
import { Call } from '../room/call.js';
import { figuresText } from '../room/check.js';
import { chime, openMedia } from '../room/media.js';
import { accessToken, markStale } from '../room/session.js';
import { showCall, wireCallControls } from '../room/ui.js';
import { Desk } from './desk.js';
import { loadRecordings, RecordButton, RecordingList, showRecording } from '../room/recording.js'; // recording (issue 13)

const $ = (id) => document.getElementById(id);
const WINDOW_CHECK_MS = 30000;
const state = { user: null, desks: new Map(), names: new Map(), chat: null, call: null, desk: null, stream: null, panel: null, noteFor: null, appointments: [], rooms: new Map() };
window.teleconsultDoctor = state; // for the browser tests and for support: no secrets

async function main() {
  const { user } = await startPage({ roles: ['doctor'] });
  state.user = user;
  state.chat = new ChatClient({ api, token: accessToken, refused: markStale, userId: user.id, label: 'Browser' });
  try { await state.chat.start(); } catch (err) { toast(errorText(err), 'error'); }
  $('note-form').addEventListener('submit', saveNote);
  $('invite-form').addEventListener('submit', invite);
  wireInviteSearch();
  await loadDay();
  setInterval(loadDay, WINDOW_CHECK_MS);
}

function dayBounds() {
  const start = new Date();
  start.setHours(0, 0, 0, 0);
  const end = new Date(start);
  end.setDate(end.getDate() + 1);
  return { start: start.toISOString(), end: end.toISOString() };
}

async function patientName(id) {
  if (!state.names.has(id)) {
    try {
      const p = await api(`/api/v1/patients/${id}`);
      state.names.set(id, p.full_name || t('doctor.patient'));
    } catch {
      state.names.set(id, t('doctor.patient'));
    }
  }
  return state.names.get(id);
}

async function loadDay() {
  const { start, end } = dayBounds();
  let items;
  try {
    const q = new URLSearchParams({ from: start, to: end, doctor: state.user.id, limit: '100' });
    items = (await api(`/api/v1/appointments?${q}`)).items;
  } catch (err) {
    toast(errorText(err), 'error');
    return;
  }
  state.appointments = items;
  const now = Date.now();
  $('today-empty').hidden = items.length > 0;
  const rows = [];
  for (const a of items) {
    const name = await patientName(a.patient_id);
    rows.push(el('li', { class: 'card', dataset: { appointment: a.id } },
      el('strong', {}, `${formatTime(a.starts_at)}–${formatTime(a.ends_at)}`), ' ', name, ' ',
      el('span', { class: 'badge' }, t(`doctor.status_${a.status}`))));
    const c = await consultationOf(a);
    const open = c && !['cancelled', 'completed', 'no_show'].includes(a.status)
      && new Date(c.join_opens_at).getTime() <= now && now <= new Date(c.join_closes_at).getTime();
    if (open && !state.desks.has(a.id)) openDesk({ ...a, consultation: c });
  }
  replace($('today-list'), rows);
}

async function consultationOf(a) {
  // The list leaves rooms out; each remote consultation's room comes with the appointment.
  if (!['video', 'audio'].includes(a.service) || ['cancelled', 'completed', 'no_show'].includes(a.status)) return null;
  if (!state.rooms.has(a.id)) {
    try {
      state.rooms.set(a.id, (await api(`/api/v1/appointments/${a.id}`)).consultation);
    } catch {
      return null;
    }
  }
  return state.rooms.get(a.id);
}

function openDesk(appointment) {
  const desk = new Desk(appointment);
  state.desks.set(appointment.id, desk);
  desk.addEventListener('knock', (e) => onKnock(e.detail));
  desk.addEventListener('knock_gone', () => renderKnocks());
  desk.link.addEventListener('peer_left', () => {
    if (state.desk === desk && state.call && state.call.peers.size === 0) toast(t('doctor.patient_left'));
  });
  desk.open();
}

function allKnocks() {
  return [...state.desks.values()].flatMap((desk) => [...desk.knocks.values()].map((k) => ({ desk, k })));
}

function onKnock({ fresh }) {
  renderKnocks();
  if (fresh) chime({ tones: [880, 660, 880] });
}

async function renderKnocks() {
  const knocks = allKnocks();
  const badge = $('knock-badge');
  badge.hidden = knocks.length === 0;
  badge.textContent = t('doctor.waiting_count', { count: knocks.length });
  document.title = knocks.length ? `(${knocks.length}) ${t('doctor.page_title')}` : t('doctor.page_title');
  $('knocks-empty').hidden = knocks.length > 0;
  const cards = [];
  for (const { desk, k } of knocks) {
    const name = k.role === 'patient' ? await patientName(k.userId) : t(`doctor.role_${k.role}`);
    const message = el('textarea', { id: `decline-${k.peerId}`, rows: 2, maxlength: 1000, class: 'decline-message' });
    const admit = el('button', { type: 'button', class: 'primary', onclick: () => admitKnock(desk, k) }, t('doctor.admit'));
    const decline = el('button', { type: 'button', onclick: () => declineKnock(desk, k, message.value) }, t('doctor.decline'));
    cards.push(el('li', { class: 'card knock', dataset: { peer: k.peerId, user: k.userId } },
      el('h2', { class: 'knock-name' }, name, ' ', el('span', { class: 'muted' }, formatTime(desk.appointment.starts_at))),
      el('p', { class: 'figures' }, figuresText(k.networkTest)),
      el('p', { class: 'row' }, admit, decline),
      el('details', {}, el('summary', {}, t('doctor.decline_with_message')),
        el('label', { for: message.id }, t('doctor.decline_message')), message)));
  }
  replace($('knock-list'), cards);
}

async function threadOf(appointment) {
  const thread = await api(`/api/v1/appointments/${appointment.id}/thread`, { method: 'POST', idempotent: true });
  return thread.id;
}

async function declineKnock(desk, k, message) {
  try {
    if (message.trim()) {
      // The message travels end to end encrypted in the appointment's chat; the patient's
      // page shows it with the refusal.
      await state.chat.send(await threadOf(desk.appointment), message.trim());
    }
    const ack = await desk.decline(k.peerId);
    if (!ack.ok) toast(ack.error?.detail ?? t('error.generic'), 'error');
    renderKnocks();
  } catch (err) {
    toast(errorText(err), 'error');
  }
}

async function admitKnock(desk, k) {
  if (state.desk && state.desk !== desk) { toast(t('doctor.finish_first'), 'error'); return; }
  if (!state.call) await startCall(desk);
  const ack = await desk.admit(k.peerId);
  if (!ack.ok) toast(ack.error?.detail ?? t('error.generic'), 'error');
  renderKnocks();
  renderPeople(desk);
}

async function startCall(desk) {
  state.desk = desk;
  if (!state.stream) {
    try { state.stream = await openMedia({ video: desk.appointment.service !== 'audio' }); } catch { state.stream = new MediaStream(); }
  }
  $('call').hidden = false;
  $('note').hidden = true;
  $('local-video').srcObject = state.stream;
  const call = new Call({ link: desk.link, stream: state.stream, iceTransportPolicy: new URLSearchParams(location.search).get('relay') === '1' ? 'relay' : 'all' });
  state.call = call;
  showCall(call);
  call.addEventListener('gone', () => renderPeople(desk));
  // The call ended under the page (the SFU room deleted or closed, LiveKit removed us):
  // the page shows it as room.html does, and the note follows.
  call.addEventListener('ended', (e) => {
    if (state.call !== call || e.detail.reason === 'left') return;
    endCall({ why: t(e.detail.reason === 'removed' ? 'doctor.call_removed' : 'room.ended') });
  });
  desk.link.addEventListener('peer_joined', () => renderPeople(desk));
  wireControls(call);
  await wireRecording(desk, call); // recording (issue 13)
  state.panel?.destroy();
  state.panel = chatPanel($('chat'), {
    client: state.chat, threadId: await threadOf(desk.appointment),
    names: { [desk.appointment.patient_id]: await patientName(desk.appointment.patient_id) },
  });
  $('call-title').focus();
}

async function renderPeople(desk) {
  const call = state.call;
  const ids = call ? [...call.roster] : [];
  const items = [];
  for (const peerId of ids) {
    const who = desk.people.get(peerId);
    // The name /signal gives (the same as on their tile), else what the desk knows.
    const name = call.people.get(peerId)?.name || (!who ? t('doctor.in_call_peer')
      : who.role === 'patient' ? await patientName(who.userId) : t(`doctor.role_${who.role}`));
    const remove = el('button', { type: 'button', class: 'danger', 'aria-label': t('doctor.remove_label', { name }) }, t('doctor.remove'));
    remove.addEventListener('click', async () => {
      remove.disabled = true;
      const ack = await desk.link.remove(peerId);
      if (!ack.ok) { remove.disabled = false; toast(ack.error?.detail ?? t('error.generic'), 'error'); return; }
      call.roster.delete(peerId);
      call.drop(peerId);
      renderPeople(desk);
    });
    items.push(el('li', { class: 'card', dataset: { peer: peerId, user: who?.userId } }, el('span', {}, name), ' ', remove));
  }
  replace($('call-people'), items);
}

function wireInviteSearch() {
  // Family members are the clinic's patients: search them by name or phone. An interpreter
  // (or anyone else) can be invited by pasting their user id.
  const input = $('invite-user');
  let timer = null;
  input.addEventListener('input', () => {
    clearTimeout(timer);
    const q = input.value.trim();
    if (q.length < 2 || /^[0-9a-f-]{36}$/i.test(q)) return;
    timer = setTimeout(async () => {
      try {
        const found = (await api(`/api/v1/patients?${new URLSearchParams({ q, limit: '10' })}`)).items;
        replace($('invite-people'), found.map((p) => el('option', { value: p.id }, p.full_name)));
      } catch { /* typing an id still works */ }
    }, 300);
  });
}

async function invite(e) {
  e.preventDefault();
  const userId = $('invite-user').value.trim();
  if (!userId || !state.desk) return;
  const ack = await state.desk.link.invite(userId);
  toast(ack.ok ? t('doctor.invited') : (ack.error?.detail ?? t('error.generic')), ack.ok ? 'ok' : 'error');
}

function wireControls(call) {
  wireCallControls(call, state.stream);
  $('ctl-end').onclick = () => endCall();
}

/** The call is over: ended here (End the consultation), or under the page (`why` says
 * how); the note and the recordings follow. */
async function endCall({ why = '' } = {}) {
  const desk = state.desk;
  if (!desk) return;
  const call = state.call;
  state.call = null;
  call?.end('left');
  state.desk = null;
  state.noteFor = desk.appointment;
  // Leaving empties the room: the others are told and the consultation ends.
  state.desks.delete(desk.appointment.id);
  await desk.link.leave();
  $('call').hidden = true;
  $('call-ended').textContent = why;
  $('call-ended').hidden = !why;
  $('note').hidden = false;
  $('note-title').focus();
  // recording (issue 13): what was recorded, playable once sealed
  showRecording(false);
  state.recordings ??= new RecordingList({ api, box: $('recordings') });
  state.recordings.show(desk.appointment.id);
}

// recording (issue 13): the Record / Stop button and the banner, from the server's state
// (GET .../recordings, so a reload shows it) and then /signal's `recording` events.
async function wireRecording(desk, call) {
  const button = new RecordButton({
    link: desk.link, button: $('rec-toggle'), why: $('rec-why'),
    // Recording happens on the SFU: a peer-to-peer call moves there with our grant.
    onGrant: (ack) => { if (state.call === call && !call.sfu) call.toSfu(ack.sfu); },
  });
  state.recordButton = button;
  if (!desk.recordingWired) {
    desk.recordingWired = true;
    desk.link.addEventListener('recording', (e) => { if (state.desk === desk) state.recordButton?.render(e.detail); });
  }
  const found = await loadRecordings(api, desk.appointment.id);
  button.render({ consent: found?.consent, recording: found?.recording });
}

async function saveNote(e) {
  e.preventDefault();
  const form = e.currentTarget;
  const body = $('note-body').value;
  try {
    await submitting(form, async () => {
      await api(`/api/v1/patients/${state.noteFor.patient_id}/notes`, { method: 'POST', body: { body } });
    });
  } catch {
    return; // the note stays in the box, marked unsent, with the reason
  }
  $('note-body').value = '';
  $('note').hidden = true;
  toast(t('doctor.note_saved'), 'ok');
}

main().catch((err) => toast(errorText(err), 'error'));
