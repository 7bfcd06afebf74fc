// room.html?appointment=<id>: the patient's (or an invited guest's) way into a
// consultation: the check, the waiting room with chat, the call (docs/room.md).
import { api } from '../api.js';
import { ChatClient } from '../chat/client.js';
import { chatPanel } from '../chat/panel.js';
import { t } from '../i18n.js';
import { startPage } from '../shell.js';
import { errorText, formatTime, toast } from '../ui.js';
import { Call } from './call.js';
import { runCheck } from './check.js';
import { openMedia } from './media.js';
import { accessToken, markStale } from './session.js';
import { SignalLink } from './signal.js';
import { showCall, wireCallControls } from './ui.js';
import { ConsentControl, loadRecordings, showRecording } from './recording.js'; // recording (issue 13)

const $ = (id) => document.getElementById(id);
const VIEWS = ['check', 'waiting', 'call', 'ended'];

function show(view) {
  for (const v of VIEWS) $(v).hidden = v !== view;
  // recording (issue 13): consent and the banner belong to the consultation, not to its end
  if (view === 'ended') { $('rec-consent').hidden = true; showRecording(false); } else if (state.consent) $('rec-consent').hidden = false;
  $(`${view}-title`)?.focus();
}

function fail(err) {
  const box = $('room-error');
  box.textContent = errorText(err);
  box.hidden = false;
}

const params = new URLSearchParams(location.search);
const state = { stream: null, link: null, call: null, chat: null, appointment: null, doctorOnline: null };
// For the browser tests and for support: the live objects of this page (no secrets).
window.teleconsultRoom = state;

async function main() {
  const { user } = await startPage({});
  const appointmentId = params.get('appointment');
  // room.html?room=<room id>: someone the doctor invited (an interpreter, family), who
  // cannot read the appointment itself; they knock straight away.
  const guestRoom = params.get('room');
  if (!appointmentId && !guestRoom) { fail({ code: 'not_found' }); return; }
  let roomId = guestRoom;
  if (appointmentId) {
    try {
      state.appointment = await api(`/api/v1/appointments/${appointmentId}`);
    } catch (err) { fail(err); return; }
    roomId = state.appointment.consultation?.room_id;
    if (!roomId) { fail({ code: 'not_found' }); return; }
    await startChat(user);
    await startRecordingState(user, appointmentId); // recording (issue 13)
  }
  state.link = new SignalLink({ roomId, token: accessToken, refused: markStale });
  wireLink(state.link);
  const video = state.appointment?.service !== 'audio';
  try {
    state.stream = await openMedia({ video });
  } catch {
    toast(t('check.no_devices'), 'error');
    state.stream = new MediaStream();
  }
  if (user.role === 'patient' && state.appointment) {
    show('check');
    $('check-start').onclick = () => check(appointmentId);
    $('check-continue').onclick = () => knock();
  } else {
    knock();
  }
}

async function check(appointmentId) {
  // The check is offered first; someone whose test cannot run may still knock.
  $('check-start').disabled = true;
  $('check-continue').disabled = true;
  try {
    await runCheck({ api, appointmentId, stream: state.stream });
    $('check').dataset.done = 'true';
  } catch (err) {
    toast(errorText(err), 'error');
  } finally {
    $('check-continue').disabled = false;
    $('check-start').disabled = false;
    $('check-continue').focus();
  }
}

async function startChat(user) {
  try {
    const thread = await api(`/api/v1/appointments/${state.appointment.id}/thread`, { method: 'POST', idempotent: true });
    state.chat = new ChatClient({ api, token: accessToken, refused: markStale, userId: user.id, label: navigator.userAgentData?.platform || 'Browser' });
    await state.chat.start();
    $('chat').hidden = false;
    chatPanel($('chat'), { client: state.chat, threadId: thread.id, names: { [state.appointment.doctor_id]: t('chat.doctor') } });
    state.threadId = thread.id;
    pollPresence();
  } catch (err) {
    toast(errorText(err), 'error');
  }
}

async function refreshPresence() {
  // Online: the doctor has a live connection; busy: online but already past our start time
  // (a consultation before ours runs late); away: no connection.
  if (state.chat?.socket?.connected && state.threadId) {
    const ack = await state.chat.call('presence', { thread_id: state.threadId });
    if (ack?.ok) state.doctorOnline = ack.online.includes(state.appointment.doctor_id);
  }
  renderWaiting();
}

function pollPresence() {
  state.chat.addEventListener('state', (e) => { if (e.detail.connected) refreshPresence(); });
  state.chat.socket?.on('presence', (data) => {
    if (data.user_id === state.appointment.doctor_id) { state.doctorOnline = data.online; renderWaiting(); }
  });
  refreshPresence();
  setInterval(refreshPresence, 10000);
}

function renderWaiting() {
  const a = state.appointment;
  if (!a) return; // a guest: no appointment of their own to time
  const late = Date.now() > new Date(a.starts_at).getTime() + 60000;
  const status = state.doctorOnline == null ? 'unknown' : !state.doctorOnline ? 'away' : late ? 'busy' : 'online';
  $('waiting-doctor').textContent = t(`room.doctor_${status}`);
  const minutes = Math.max(0, Math.round((new Date(a.starts_at).getTime() - Date.now()) / 60000));
  $('waiting-eta').textContent = minutes > 0
    ? t('room.eta', { minutes, time: formatTime(a.starts_at) })
    : t('room.eta_now');
}

function knock() {
  show('waiting');
  $('waiting-outcome').hidden = true;
  $('waiting-again').hidden = true;
  renderWaiting();
  state.link.enter();
  $('waiting-leave').onclick = () => leave();
  $('waiting-again').onclick = () => knock();
}

function wireLink(link) {
  link.addEventListener('joined', (e) => {
    if (e.detail.status === 'admitted') { startCall(e.detail); return; }
    if (state.call) {
      // Away longer than the grace period: the server let our place go; we knock again.
      state.call.end('lost');
      state.call = null;
      show('waiting');
      renderWaiting();
    }
  });
  link.addEventListener('admitted', (e) => startCall(e.detail));
  link.addEventListener('refused', (e) => fail(e.detail));
  // recording (issue 13): consent given/withdrawn, a recording started/ended
  link.addEventListener('recording', (e) => {
    showRecording(e.detail.recording);
    state.consent?.render(e.detail.consent);
  });
  link.addEventListener('declined', () => turnedAway('room.declined'));
  link.addEventListener('removed', () => turnedAway('room.removed'));
}

function turnedAway(key) {
  if (state.call) { state.call.end('removed'); state.call = null; }
  show('waiting');
  const box = $('waiting-outcome');
  box.textContent = t(key);
  box.hidden = false;
  $('waiting-again').hidden = false;
  $('chat').hidden = false; // the doctor's message is in the chat
}

function startCall(answer) {
  if (state.call) return;
  show('call');
  $('local-video').srcObject = state.stream;
  const policy = params.get('relay') === '1' ? 'relay' : 'all';
  const call = new Call({ link: state.link, stream: state.stream, iceTransportPolicy: policy });
  state.call = call;
  showCall(call);
  call.addEventListener('ended', (e) => {
    if (state.call !== call) return;
    state.call = null;
    // LiveKit said so before /signal did (the doctor removed us; the room was closed).
    if (e.detail.reason === 'removed') turnedAway('room.removed');
    else if (e.detail.reason === 'ended') show('ended');
  });
  // Everyone else left (the doctor ended the consultation): the call is over.
  call.addEventListener('gone', (e) => { if (e.detail.left === 0) endCall('ended'); });
  wireControls(call);
  call.start(answer);
}

function wireControls(call) {
  wireCallControls(call, state.stream);
  $('ctl-leave').onclick = () => leave();
}

function endCall(reason) {
  state.call?.end(reason);
  state.call = null;
  show('ended');
}

async function leave() {
  state.call?.end('left');
  state.call = null;
  await state.link.leave();
  state.stream?.getTracks().forEach((tr) => tr.stop());
  show('ended');
}

// recording (issue 13): the state as the server has it (right after a reload too), and the
// patient's consent control in the check, the waiting room and the call.
async function startRecordingState(user, appointmentId) {
  const found = await loadRecordings(api, appointmentId);
  if (user.role === 'patient' && state.appointment.patient_id === user.id) {
    state.consent = new ConsentControl({ api, appointmentId, box: $('rec-consent') });
    state.consent.render(found?.consent);
  }
  showRecording(found?.recording);
}

main().catch((err) => fail(err));
