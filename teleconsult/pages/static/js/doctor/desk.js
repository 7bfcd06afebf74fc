// The doctor's side of one consultation room: a /signal peer held for the day's
// appointment, and the people knocking at it with their network check.
import { api } from '../api.js';
import { SignalLink } from '../room/signal.js';
import { accessToken, markStale } from '../room/session.js';

export class Desk extends EventTarget {
  constructor(appointment) {
    super();
    this.appointment = appointment;
    this.knocks = new Map(); // peer id -> {peerId, role, userId, networkTest}
    this.people = new Map(); // peer id -> the knock it came in with (kept after admission)
    this.link = new SignalLink({ roomId: appointment.consultation.room_id, token: accessToken, refused: markStale });
    this.link.addEventListener('joined', (e) => this.onJoined(e.detail));
    this.link.addEventListener('rejoined', (e) => this.onJoined(e.detail));
    this.link.addEventListener('waiting', (e) => this.knock({
      peerId: e.detail.peer_id, role: e.detail.role, userId: e.detail.user_id, networkTest: e.detail.network_test,
    }, true));
    this.link.addEventListener('waiting_left', (e) => this.forget(e.detail.peer_id));
    this.link.addEventListener('peer_left', (e) => this.forget(e.detail.peer_id));
  }

  fire(name, detail) {
    this.dispatchEvent(new CustomEvent(name, { detail }));
  }

  open() {
    this.link.enter();
  }

  async onJoined(answer) {
    const waiting = (answer.peers ?? []).filter((p) => p.status === 'waiting');
    if (!waiting.length) return;
    // Those who knocked before we joined: their network checks come from the REST API.
    let tests = [];
    try {
      tests = (await api(`/api/v1/appointments/${this.appointment.id}/network-tests`)).items;
    } catch { /* shown without figures */ }
    for (const p of waiting) {
      const test = tests.find((x) => x.user_id === p.user_id) ?? null;
      this.knock({ peerId: p.peer_id, role: p.role, userId: p.user_id, networkTest: test }, true);
    }
  }

  knock(entry, fresh) {
    const known = this.knocks.has(entry.peerId);
    this.knocks.set(entry.peerId, entry);
    this.people.set(entry.peerId, entry);
    this.fire('knock', { desk: this, entry, fresh: fresh && !known });
  }

  forget(peerId) {
    if (this.knocks.delete(peerId)) this.fire('knock_gone', { desk: this, peerId });
  }

  async admit(peerId) {
    const ack = await this.link.admit(peerId);
    if (ack.ok) this.forget(peerId);
    return ack;
  }

  async decline(peerId) {
    const ack = await this.link.decline(peerId);
    if (ack.ok) this.forget(peerId);
    return ack;
  }

  close() {
    this.link.leave();
  }
}
