// A room on the SFU (docs/signaling.md, "SFU rooms"): instead of one connection per other
// participant, one connection publishes this side's media and one receives everyone
// else's, both negotiated through /signal's `sfu` relay (Janus, grant.relay === true).
// Same events as PeerLink's owner expects: `track` (with the peer id), `state`, `mode`.
import { peerOfMid } from './people.js';

const GATHER_MS = 3000;

function gathered(pc) {
  if (pc.iceGatheringState === 'complete') return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, GATHER_MS);
    pc.addEventListener('icegatheringstatechange', () => {
      if (pc.iceGatheringState === 'complete') { clearTimeout(timer); resolve(); }
    });
  });
}

export class SfuSession extends EventTarget {
  constructor({ link, stream, iceServers, iceTransportPolicy = 'all' }) {
    super();
    this.link = link;
    this.stream = stream;
    this.config = { iceServers, iceTransportPolicy };
    this.publisher = null;
    this.subscriber = null;
    this.closed = false;
    this.localMode = 'video';
  }

  fire(name, detail) {
    this.dispatchEvent(new CustomEvent(name, { detail }));
  }

  async ask(message) {
    const ack = await this.link.request('sfu', message);
    if (!ack.ok) throw Object.assign(new Error(ack.error?.detail ?? 'sfu'), { code: ack.error?.code });
    return ack;
  }

  watch(pc, role) {
    pc.onconnectionstatechange = () => this.fire('state', { role, state: pc.connectionState });
  }

  /** Send this side's camera and microphone to the SFU (candidates in the offer, no trickle). */
  async publish() {
    const pc = new RTCPeerConnection(this.config);
    this.publisher?.close();
    this.publisher = pc;
    this.watch(pc, 'publisher');
    for (const track of this.stream?.getTracks() ?? []) pc.addTransceiver(track, { direction: 'sendonly', streams: [this.stream] });
    await pc.setLocalDescription(await pc.createOffer());
    await gathered(pc);
    const ack = await this.ask({ kind: 'publish', sdp: pc.localDescription.sdp });
    await pc.setRemoteDescription({ type: 'answer', sdp: ack.sdp });
  }

  /** Receive these peers' media; a new subscription replaces the previous one. */
  async subscribe(peerIds) {
    if (!peerIds.length) return;
    const ack = await this.ask({ kind: 'subscribe', peers: peerIds });
    const pc = new RTCPeerConnection(this.config);
    this.subscriber?.close();
    this.subscriber = pc;
    this.watch(pc, 'subscriber');
    // One connection carries everyone's tracks: the answer says whose each mid is, and
    // each person gets a stream of their own (their tile; all their audio plays).
    const streams = new Map(); // peer id -> MediaStream
    pc.ontrack = (e) => {
      const peerId = peerOfMid(ack.streams, e.transceiver?.mid);
      if (!peerId) return;
      // A fresh stream with the tracks so far: the tile's video takes the new one.
      const stream = new MediaStream([...(streams.get(peerId)?.getTracks() ?? []), e.track]);
      streams.set(peerId, stream);
      this.fire('track', { peerId, stream, track: e.track });
    };
    await pc.setRemoteDescription({ type: 'offer', sdp: ack.sdp });
    await pc.setLocalDescription(await pc.createAnswer());
    await gathered(pc);
    await this.ask({ kind: 'answer', sdp: pc.localDescription.sdp });
  }

  async setAudioOnly(on) {
    this.localMode = on ? 'audio' : 'video';
    for (const sender of this.publisher?.getSenders() ?? []) {
      if (sender.track?.kind !== 'video') continue;
      const params = sender.getParameters();
      (params.encodings ?? []).forEach((enc) => { enc.active = !on; });
      try { await sender.setParameters(params); } catch { /* next time */ }
    }
    this.fire('mode', { local: this.localMode, remote: 'video', automatic: false });
  }

  async replaceTrack(track) {
    const sender = this.publisher?.getSenders().find((s) => s.track?.kind === track.kind);
    if (sender) await sender.replaceTrack(track);
  }

  async stats() {
    const out = new Map();
    for (const pc of [this.publisher, this.subscriber]) {
      if (pc) (await pc.getStats()).forEach((s, id) => out.set(id, s));
    }
    return out;
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    this.link.request('sfu', { kind: 'leave' });
    this.publisher?.close();
    this.subscriber?.close();
  }
}
