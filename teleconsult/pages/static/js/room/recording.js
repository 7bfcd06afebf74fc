// recording (issue 13): what both sides show of a consultation's recording (docs/room.md,
// "Recording"). The state comes from GET /api/v1/appointments/{id}/recordings (on load, so
// a reload shows it) and then from /signal's `recording {consent, recording}` event.
import { t } from '../i18n.js';
import { el, errorText, formatDateTime, replace } from '../ui.js';

const $ = (id) => document.getElementById(id);
const BUSY = new Set(['pending', 'recording', 'sealing']);

/** The consultation's recording state and recordings (null if it cannot be read). */
export async function loadRecordings(api, appointmentId) {
  try {
    return await api(`/api/v1/appointments/${appointmentId}/recordings`);
  } catch {
    return null;
  }
}

/** The "● Recording" banner: text (not colour only) in a live region. */
export function showRecording(on) {
  const box = $('rec-indicator');
  if (!box) return;
  const was = box.dataset.on === 'true';
  box.dataset.on = String(!!on);
  box.hidden = !on;
  box.textContent = t('rec.indicator');
  // Said when it starts and when it stops, in a region that is always there.
  const live = $('rec-live');
  if (live && was !== !!on) live.textContent = t(on ? 'rec.started' : 'rec.stopped');
}

/** Words for a refused record/consent (ack error or ApiError). */
export function recordingError(error) {
  const key = `rec.error_${error?.code}`;
  const known = t(key);
  return known !== key ? known : errorText(error);
}

/** The patient's consent control: its state in words, one button to give or withdraw. */
export class ConsentControl {
  constructor({ api, appointmentId, box }) {
    this.api = api;
    this.appointmentId = appointmentId;
    this.box = box;
    this.consent = null;
    this.state = el('p', { id: 'rec-consent-state', class: 'rec-consent-state' });
    this.button = el('button', { type: 'button', id: 'rec-consent-toggle' });
    this.error = el('p', { class: 'form-error', role: 'alert', hidden: true });
    this.button.addEventListener('click', () => this.toggle());
    replace(box, el('h2', { class: 'rec-title' }, t('rec.consent_title')), this.state,
      el('p', { class: 'help' }, t('rec.consent_help')), el('p', { class: 'row' }, this.button), this.error);
    box.hidden = false;
  }

  render(consent) {
    this.consent = !!consent;
    this.box.dataset.consent = String(this.consent);
    this.state.textContent = t(this.consent ? 'rec.consent_given' : 'rec.consent_none');
    this.button.textContent = t(this.consent ? 'rec.consent_withdraw' : 'rec.consent_give');
  }

  async toggle() {
    this.button.disabled = true;
    this.error.hidden = true;
    const giving = !this.consent;
    try {
      await this.api(`/api/v1/appointments/${this.appointmentId}/recording-consent`, { method: giving ? 'POST' : 'DELETE', idempotent: true });
      this.render(giving);
    } catch (err) {
      this.error.textContent = recordingError(err);
      this.error.hidden = false;
    } finally {
      this.button.disabled = false;
    }
  }
}

/** The doctor's Record / Stop button, disabled with the reason until the patient consents. */
export class RecordButton {
  constructor({ link, button, why, onGrant }) {
    this.link = link;
    this.button = button;
    this.why = why;
    this.onGrant = onGrant; // (ack) => void: a peer-to-peer call moves to the SFU first
    this.consent = false;
    this.recording = false;
    button.onclick = () => this.toggle();
  }

  render({ consent = this.consent, recording = this.recording } = {}) {
    this.consent = !!consent;
    this.recording = !!recording;
    const b = this.button;
    b.hidden = false;
    b.textContent = t(this.recording ? 'rec.stop' : 'rec.start');
    // Stopping is always possible; starting needs the patient's consent.
    b.disabled = !this.recording && !this.consent;
    this.why.textContent = this.recording ? '' : t(this.consent ? 'rec.ready' : 'rec.needs_consent');
    showRecording(this.recording);
  }

  async toggle() {
    const on = !this.recording;
    this.button.disabled = true;
    const ack = await this.link.request('record', { on });
    if (ack?.ok) {
      if (ack.mode === 'sfu') this.onGrant?.(ack);
      this.render({ recording: ack.recording });
    } else {
      this.render({});
      this.why.textContent = recordingError(ack?.error);
    }
  }
}

/** After the call: the consultation's recordings, each ready one with a player. */
export class RecordingList {
  constructor({ api, box }) {
    this.api = api;
    this.box = box;
    this.timer = null;
  }

  async show(appointmentId) {
    clearTimeout(this.timer);
    this.appointmentId = appointmentId;
    const found = await loadRecordings(this.api, appointmentId);
    if (this.appointmentId !== appointmentId) return;
    const items = found?.items ?? [];
    this.box.hidden = items.length === 0;
    const list = this.box.querySelector('ul');
    const rows = [];
    for (const r of items) rows.push(await this.row(r));
    replace(list, rows);
    // Sealing takes a little while after the call: look again until every one is final.
    if (items.some((r) => BUSY.has(r.state))) this.timer = setTimeout(() => this.show(appointmentId), 2000);
  }

  async row(r) {
    const label = el('p', {}, el('strong', {}, formatDateTime(r.created_at)), ' ', el('span', { class: 'badge' }, t(`rec.state_${r.state}`)));
    const li = el('li', { class: 'card rec-item', dataset: { recording: r.id, state: r.state } }, label);
    if (r.state !== 'ready') return li;
    const video = el('video', { controls: true, preload: 'metadata', class: 'rec-player', 'aria-label': t('rec.player_label', { when: formatDateTime(r.created_at) }) });
    li.append(video);
    await this.load(video, r.id);
    // A ticket lives minutes: a player left open past that asks for a fresh one.
    video.addEventListener('error', () => {
      if (video.dataset.retried === 'true') return;
      video.dataset.retried = 'true';
      const at = video.currentTime;
      this.load(video, r.id).then(() => { video.currentTime = at; });
    });
    return li;
  }

  async load(video, recordingId) {
    try {
      const ticket = await this.api(`/api/v1/recordings/${recordingId}/playback-ticket`, { method: 'POST' });
      video.src = ticket.url;
    } catch (err) {
      video.replaceWith(el('p', { class: 'form-error' }, recordingError(err)));
    }
  }
}
