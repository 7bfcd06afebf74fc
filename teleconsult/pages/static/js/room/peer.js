// The media of a call: one RTCPeerConnection per other participant (peer to peer), with
// "perfect negotiation" (the `polite` flag of docs/signaling.md settles glare), ICE restarts
// through /signal, and the audio-only fallback. This is the only module that touches
// RTCPeerConnection in a call; an SFU mode (teleconsult/rtc/sfu.py) adds a class with the
// same surface (`onSignal`, `restart`, `setAudioOnly`, `stats`, `close`, and the `track`,
// `state`, `mode` events) that talks to the SFU instead of to each peer.
import { qualityDecider, sampleOf } from './quality.js';

const STATS_EVERY_MS = 2000;
const DISCONNECTED_RESTART_MS = 3000;

export class PeerLink extends EventTarget {
  constructor({ peerId, polite, iceServers, iceTransportPolicy = 'all', stream, signal }) {
    super();
    this.peerId = peerId;
    this.polite = polite;
    this.signal = signal; // (message) => Promise: sends {kind, sdp|candidate, restart} to this peer
    this.stream = stream;
    this.makingOffer = false;
    this.ignoreOffer = false;
    this.restarting = false;
    this.localMode = 'video'; // what this side sends
    this.remoteMode = 'video'; // what the other side says it sends
    this.forcedMode = null; // the person's own choice (camera off) wins over the decider
    this.decide = qualityDecider();
    this.lastStats = null;
    this.closed = false;
    this.pc = new RTCPeerConnection({ iceServers, iceTransportPolicy });
    this.control = this.pc.createDataChannel('control', { negotiated: true, id: 0 });
    this.control.onmessage = (e) => this.onControl(e.data);
    this.control.onopen = () => this.sendMode();
    for (const track of stream?.getTracks() ?? []) this.pc.addTrack(track, stream);
    this.pc.ontrack = (e) => this.fire('track', { stream: e.streams[0] ?? new MediaStream([e.track]), track: e.track });
    this.pc.onicecandidate = ({ candidate }) => {
      if (candidate && candidate.candidate) {
        this.signal({ kind: 'candidate', candidate: { candidate: candidate.candidate, sdpMid: candidate.sdpMid, sdpMLineIndex: candidate.sdpMLineIndex } });
      }
    };
    this.pc.onnegotiationneeded = () => this.offer();
    this.pc.oniceconnectionstatechange = () => this.onIceState();
    this.pc.onconnectionstatechange = () => this.fire('state', { state: this.pc.connectionState });
    this.statsTimer = setInterval(() => this.sample(), STATS_EVERY_MS);
  }

  fire(name, detail) {
    this.dispatchEvent(new CustomEvent(name, { detail }));
  }

  async offer() {
    try {
      this.makingOffer = true;
      await this.pc.setLocalDescription();
      await this.signal({ kind: 'offer', sdp: this.pc.localDescription.sdp, restart: this.restarting });
    } catch (err) {
      this.fire('error', { error: err });
    } finally {
      this.makingOffer = false;
      this.restarting = false;
    }
  }

  /** A `signal` event from this peer. */
  async onSignal({ kind, sdp, candidate }) {
    if (this.closed) return;
    try {
      if (kind === 'candidate') {
        try {
          await this.pc.addIceCandidate(candidate);
        } catch (err) {
          if (!this.ignoreOffer) throw err;
        }
        return;
      }
      const collision = kind === 'offer' && (this.makingOffer || this.pc.signalingState !== 'stable');
      this.ignoreOffer = !this.polite && collision;
      if (this.ignoreOffer) return;
      await this.pc.setRemoteDescription({ type: kind, sdp });
      if (kind === 'offer') {
        await this.pc.setLocalDescription();
        await this.signal({ kind: 'answer', sdp: this.pc.localDescription.sdp });
      }
    } catch (err) {
      this.fire('error', { error: err });
    }
  }

  /** Start an ICE restart (after a network change, or when this side came back). */
  restart() {
    if (this.closed) return;
    this.restarting = true;
    this.restarts = (this.restarts ?? 0) + 1;
    this.pc.restartIce(); // fires negotiationneeded: offer() sends it with restart: true
  }

  onIceState() {
    const state = this.pc.iceConnectionState;
    this.fire('state', { state: this.pc.connectionState, ice: state });
    clearTimeout(this.iceTimer);
    if (state === 'failed') this.restart();
    if (state === 'disconnected') {
      this.iceTimer = setTimeout(() => {
        if (this.pc.iceConnectionState === 'disconnected') this.restart();
      }, DISCONNECTED_RESTART_MS);
    }
  }

  // -- audio-only fallback -----------------------------------------------------------

  async sample() {
    if (this.closed || this.pc.connectionState !== 'connected') return;
    const stats = await this.pc.getStats();
    const sample = sampleOf(this.lastStats, stats);
    this.lastStats = stats;
    this.lastSample = sample;
    const mode = this.forcedMode ?? this.decide(sample);
    if (mode !== this.localMode) await this.setAudioOnly(mode === 'audio', { automatic: true });
  }

  /** Stop (or resume) sending video without renegotiating; tells the other side. */
  async setAudioOnly(on, { automatic = false } = {}) {
    if (!automatic) this.forcedMode = on ? 'audio' : null;
    this.localMode = on ? 'audio' : 'video';
    for (const sender of this.pc.getSenders()) {
      if (sender.track?.kind !== 'video') continue;
      const params = sender.getParameters();
      if (!params.encodings?.length) continue;
      params.encodings.forEach((enc) => { enc.active = !on; });
      try {
        await sender.setParameters(params);
      } catch {
        // a sender mid-negotiation: the next sample tries again
      }
    }
    this.sendMode(automatic);
    this.fire('mode', { local: this.localMode, remote: this.remoteMode, automatic });
  }

  sendMode(automatic = false) {
    if (this.control.readyState === 'open') {
      this.control.send(JSON.stringify({ type: 'mode', mode: this.localMode, automatic }));
    }
  }

  onControl(data) {
    let msg;
    try { msg = JSON.parse(data); } catch { return; }
    if (msg.type === 'mode' && (msg.mode === 'audio' || msg.mode === 'video')) {
      this.remoteMode = msg.mode;
      this.fire('mode', { local: this.localMode, remote: this.remoteMode, automatic: !!msg.automatic });
    }
  }

  /** Replace the camera (switch camera) or the microphone without renegotiating. */
  async replaceTrack(track) {
    const sender = this.pc.getSenders().find((s) => s.track?.kind === track.kind);
    if (sender) await sender.replaceTrack(track);
  }

  async stats() {
    return this.pc.getStats();
  }

  close() {
    this.closed = true;
    clearInterval(this.statsTimer);
    clearTimeout(this.iceTimer);
    this.pc.close();
    this.fire('state', { state: 'closed' });
  }
}
