// A room on LiveKit (grant.backend === 'livekit'; docs/room.md, "LiveKit"): the page joins
// LiveKit's own server with livekit-client, the grant's URL and token; /signal only grants.
// call.js loads this module (and the vendored client, ~150 KB compressed) with import() only
// for such a grant, so a peer-to-peer or Janus call never fetches it. Same surface as
// SfuSession: publish, subscribe, setAudioOnly, replaceTrack, stats, close, and the `track`
// (with the participant's identity), `left`, `state`, `mode` events; `removed` when LiveKit says the doctor removed this participant,
// `ended` when the room is gone and no fresh grant brings it back.
import { DisconnectReason, Room, RoomEvent, Track } from '../../vendor/livekit-client.js';

// Full reconnects (livekit-client gave up resuming) with a fresh grant from /signal.
const RECONNECTS = 3;
// Disconnections that joining again must not undo: the room is gone, or this identity
// joined from another tab (which a reconnect here would throw out in turn).
const FINAL = [
  DisconnectReason.ROOM_DELETED, DisconnectReason.ROOM_CLOSED, DisconnectReason.DUPLICATE_IDENTITY,
  DisconnectReason.JOIN_FAILURE, DisconnectReason.USER_REJECTED,
];

export class LiveKitSession extends EventTarget {
  /**
   * @param grant the /signal grant: {backend: 'livekit', url, room, token, identity, expires_at}
   * @param renew () => Promise of a fresh grant (or null: no longer admitted), asked of /signal
   */
  constructor({ grant, stream, renew, iceTransportPolicy = 'all' }) {
    super();
    this.grant = grant;
    this.stream = stream;
    this.renew = renew;
    this.iceTransportPolicy = iceTransportPolicy;
    this.closed = false;
    this.localMode = 'video';
    this.remotes = new Map(); // participant identity -> the MediaStream shown for them
    this.room = null;
  }

  fire(name, detail) {
    this.dispatchEvent(new CustomEvent(name, { detail }));
  }

  /** A grant seen later (a /signal rejoin or `mode` answer): the next connect uses it. */
  update(grant) {
    if (grant?.backend === 'livekit' && grant.token) this.grant = grant;
  }

  makeRoom() {
    const room = new Room({
      // The dual peer connection protocol (/rtc): publisher primary, as every LiveKit
      // server speaks it (docs/rtc.md, "LiveKit in the page").
      singlePeerConnection: false,
      adaptiveStream: false,
      dynacast: true,
      // The camera and microphone belong to the page (its preview, the next call).
      stopLocalTrackOnUnpublish: false,
      // One encoding: a consultation has three or four people, and simulcast's extra
      // layers would cost a patient's weak uplink more than they save anyone.
      publishDefaults: { simulcast: false },
    });
    room.on(RoomEvent.TrackSubscribed, (track, _pub, participant) => this.onTrack(track, participant));
    room.on(RoomEvent.TrackUnsubscribed, (track, _pub, participant) => {
      this.remotes.get(participant.identity)?.removeTrack(track.mediaStreamTrack);
    });
    room.on(RoomEvent.ParticipantDisconnected, (participant) => {
      this.remotes.delete(participant.identity);
      this.fire('left', { identity: participant.identity }); // their tile goes
    });
    room.on(RoomEvent.Reconnecting, () => this.fire('state', { role: 'livekit', state: 'reconnecting' }));
    room.on(RoomEvent.SignalReconnecting, () => this.fire('state', { role: 'livekit', state: 'reconnecting' }));
    room.on(RoomEvent.Reconnected, () => this.fire('state', { role: 'livekit', state: 'connected' }));
    room.on(RoomEvent.Disconnected, (reason) => this.onDisconnected(room, reason));
    return room;
  }

  /** A participant's track: one stream (one tile, all its audio) per identity, made
   * afresh with the tracks so far so that the tile's video takes it. */
  onTrack(track, participant) {
    const before = this.remotes.get(participant.identity)?.getTracks() ?? [];
    const stream = new MediaStream([...before, track.mediaStreamTrack]);
    this.remotes.set(participant.identity, stream);
    this.fire('track', { stream, track: track.mediaStreamTrack, identity: participant.identity });
  }

  /** Join the grant's room and send the page's own camera and microphone (not re-acquired). */
  async publish() {
    const room = this.makeRoom();
    this.room = room;
    this.remotes = new Map();
    const rtcConfig = this.iceTransportPolicy === 'relay' ? { iceTransportPolicy: 'relay' } : undefined;
    await room.connect(this.grant.url, this.grant.token, { autoSubscribe: true, rtcConfig });
    if (this.closed || this.room !== room) return;
    this.fire('state', { role: 'livekit', state: 'connected' });
    for (const track of this.stream?.getTracks() ?? []) {
      if (track.readyState !== 'live') continue;
      const source = track.kind === 'audio' ? Track.Source.Microphone : Track.Source.Camera;
      const pub = await room.localParticipant.publishTrack(track, { source });
      if (track.kind === 'video' && this.localMode === 'audio') await pub.mute();
    }
  }

  /** LiveKit subscribes to everyone by itself (autoSubscribe): nothing to ask. */
  async subscribe() {}

  async onDisconnected(room, reason) {
    if (this.closed || this.room !== room) return;
    if (reason === DisconnectReason.PARTICIPANT_REMOVED) {
      this.fire('removed', { reason });
      return;
    }
    if (FINAL.includes(reason)) {
      this.fire('ended', { reason });
      return;
    }
    // livekit-client gave up resuming (the network, the server going away): join again,
    // with a fresh grant (the first token may have expired meanwhile).
    this.fire('state', { role: 'livekit', state: 'reconnecting' });
    for (let attempt = 0; attempt < RECONNECTS && !this.closed; attempt += 1) {
      try {
        const fresh = await this.renew?.();
        if (!fresh) break;
        this.update(fresh);
        await this.publish();
        return;
      } catch {
        await new Promise((r) => setTimeout(r, 1000 * (attempt + 1)));
      }
    }
    if (!this.closed) this.fire('ended', { reason });
  }

  camera() {
    return this.room?.localParticipant.getTrackPublication(Track.Source.Camera);
  }

  async setAudioOnly(on) {
    this.localMode = on ? 'audio' : 'video';
    const pub = this.camera();
    if (pub) await (on ? pub.mute() : pub.unmute());
    this.fire('mode', { local: this.localMode, remote: 'video', automatic: false });
  }

  async replaceTrack(track) {
    const source = track.kind === 'audio' ? Track.Source.Microphone : Track.Source.Camera;
    const pub = this.room?.localParticipant.getTrackPublication(source);
    if (pub?.track) await pub.track.replaceTrack(track, { userProvidedTrack: true });
  }

  /** Every sender's and receiver's stats, as one Map (the page's figures and the tests). */
  async stats() {
    const out = new Map();
    const tracks = [];
    if (this.room) {
      for (const pub of this.room.localParticipant.trackPublications.values()) tracks.push(pub.track);
      for (const p of this.room.remoteParticipants.values()) {
        for (const pub of p.trackPublications.values()) tracks.push(pub.track);
      }
    }
    for (const track of tracks) {
      const report = await track?.getRTCStatsReport();
      report?.forEach((s, id) => out.set(id, s));
    }
    return out;
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    this.room?.disconnect(false);
  }
}
