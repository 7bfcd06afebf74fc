// A call in one room: PeerLinks to the other admitted participants, driven by the room's
// SignalLink. The newcomer offers (the others answer); perfect negotiation covers the rest.
// After this side's connection comes back (a rejoin with its peer id), it restarts ICE
// towards everyone; the others keep their connection and answer. On the SFU: Janus through
// /signal's relay (sfu.js), or LiveKit with its own client (livekit.js, loaded on demand).
import { learn as learnPeople, peerOfIdentity } from './people.js';
import { PeerLink } from './peer.js';
import { SfuSession } from './sfu.js';

export class Call extends EventTarget {
  constructor({ link, stream, iceTransportPolicy = 'all' }) {
    super();
    this.link = link;
    this.stream = stream;
    this.iceTransportPolicy = iceTransportPolicy;
    this.peers = new Map();
    this.known = new Map(); // peer id -> our politeness towards it
    this.roster = new Set(); // the other admitted peers
    this.people = new Map(); // peer id -> {peerId, role, userId, name}: who each tile shows
    this.sfu = null; // an SfuSession once the room is on the SFU
    this.audioOnly = false;
    this.handlers = {
      signal: (e) => this.onSignal(e.detail),
      peer_joined: (e) => {
        this.known.set(e.detail.peer_id, e.detail.polite);
        this.roster.add(e.detail.peer_id);
        this.learn([e.detail]);
      },
      peer_left: (e) => { this.roster.delete(e.detail.peer_id); this.drop(e.detail.peer_id); },
      mode: (e) => { if (e.detail.mode === 'sfu') this.toSfu(e.detail.sfu); },
      sfu_published: () => this.sfu?.subscribe([...this.roster]).catch((err) => this.fire('error', { error: err })),
      removed: () => this.end('removed'),
      peer_disconnected: (e) => this.fire('peer', { peerId: e.detail.peer_id, connected: false }),
      peer_reconnected: (e) => this.fire('peer', { peerId: e.detail.peer_id, connected: true }),
      rejoined: (e) => { this.sfu?.update?.(e.detail.sfu); this.learn(e.detail.peers); this.onRejoined(e.detail); },
      // Fresh TURN credentials: a later ICE restart must not use expired ones.
      ice_servers: (e) => this.refreshIce(e.detail.ice_servers),
      link: (e) => this.fire('reconnecting', { on: !e.detail.up || this.anyDown() }),
    };
    for (const [name, fn] of Object.entries(this.handlers)) link.addEventListener(name, fn);
  }

  fire(name, detail) {
    this.dispatchEvent(new CustomEvent(name, { detail }));
  }

  get iceServers() {
    return this.link.state?.ice_servers ?? [];
  }

  anyDown() {
    return [...this.peers.values()].some((p) => !['connected', 'new'].includes(p.pc.connectionState));
  }

  learn(views) {
    learnPeople(this.people, views);
    this.fire('people', {});
  }

  /** Start with the answer we were admitted with: offer to every admitted peer. */
  start(answer) {
    for (const p of answer.peers ?? []) if (p.status === 'admitted') this.roster.add(p.peer_id);
    this.learn(answer.peers);
    if (answer.mode === 'sfu') {
      this.toSfu(answer.sfu);
      return;
    }
    for (const p of answer.peers ?? []) {
      if (p.status === 'admitted') this.linkTo(p.peer_id, p.polite);
    }
  }

  /** The room moved to the SFU (a third person, or recording): one publisher, one subscriber. */
  async toSfu(grant) {
    if (this.sfu || this.moving) {
      this.sfu?.update?.(grant);
      return;
    }
    this.moving = true;
    for (const id of [...this.peers.keys()]) this.drop(id, { quiet: true });
    let sfu;
    try {
      sfu = await this.sfuFor(grant);
    } catch (err) {
      this.fire('error', { error: err }); // the LiveKit client could not be loaded
      return;
    } finally {
      this.moving = false;
    }
    if (this.over) return;
    if (!sfu) {
      this.fire('unsupported', { backend: grant?.backend });
      return;
    }
    this.sfu = sfu;
    // Whose media: Janus says by mid (sfu.js), LiveKit by participant identity (our user id).
    const whose = (d) => d.peerId ?? (d.identity != null ? peerOfIdentity(this.people, d.identity) : 'sfu');
    sfu.addEventListener('track', (e) => this.fire('remote', { ...e.detail, peerId: whose(e.detail) }));
    sfu.addEventListener('left', (e) => this.fire('remote_left', { peerId: whose(e.detail) }));
    sfu.addEventListener('removed', () => this.end('removed'));
    sfu.addEventListener('ended', () => this.end('ended'));
    sfu.addEventListener('mode', (e) => this.fire('mode', { peerId: 'sfu', ...e.detail }));
    sfu.addEventListener('state', (e) => this.fire('reconnecting', { on: !['connected', 'new', 'connecting'].includes(e.detail.state) }));
    if (this.audioOnly) sfu.setAudioOnly(true);
    try {
      await sfu.publish();
      await sfu.subscribe([...this.roster]);
    } catch (err) {
      this.fire('error', { error: err });
    }
  }

  /** The session for this grant: Janus over /signal's relay, or LiveKit with its own
   * client, imported only now (a peer-to-peer or Janus call never fetches it). */
  async sfuFor(grant) {
    if (grant?.relay) {
      return new SfuSession({ link: this.link, stream: this.stream, iceServers: this.iceServers, iceTransportPolicy: this.iceTransportPolicy });
    }
    if (grant?.backend !== 'livekit') return null;
    const { LiveKitSession } = await import('./livekit.js');
    return new LiveKitSession({
      grant, stream: this.stream, iceTransportPolicy: this.iceTransportPolicy, renew: () => this.freshGrant(),
    });
  }

  /** A fresh SFU grant: /signal answers a rejoin with our peer id with one while we are
   * admitted (null once we are not). */
  async freshGrant() {
    const answer = await this.link.join();
    return answer.ok && answer.status === 'admitted' ? answer.sfu ?? null : null;
  }

  linkTo(peerId, polite) {
    let peer = this.peers.get(peerId);
    if (peer && !peer.closed) return peer;
    peer = new PeerLink({
      peerId, polite, iceServers: this.iceServers, iceTransportPolicy: this.iceTransportPolicy,
      stream: this.stream, signal: (m) => this.link.send(peerId, m),
    });
    if (this.audioOnly) peer.setAudioOnly(true);
    peer.addEventListener('track', (e) => this.fire('remote', { peerId, ...e.detail }));
    peer.addEventListener('mode', (e) => this.fire('mode', { peerId, ...e.detail }));
    peer.addEventListener('state', (e) => {
      this.fire('state', { peerId, ...e.detail });
      this.fire('reconnecting', { on: !this.link.socket.connected || this.anyDown() });
    });
    this.peers.set(peerId, peer);
    return peer;
  }

  refreshIce(iceServers) {
    for (const pc of [...[...this.peers.values()].map((p) => p.pc), this.sfu?.publisher, this.sfu?.subscriber]) {
      if (!pc || pc.connectionState === 'closed') continue;
      try { pc.setConfiguration({ ...pc.getConfiguration(), iceServers }); } catch { /* closed meanwhile */ }
    }
  }

  onSignal(data) {
    let peer = this.peers.get(data.from);
    if (!peer && data.kind === 'offer') {
      const listed = this.link.state?.peers?.find((p) => p.peer_id === data.from);
      const polite = this.known.get(data.from) ?? listed?.polite ?? this.link.peerId > data.from;
      peer = this.linkTo(data.from, polite);
    }
    peer?.onSignal(data);
  }

  onRejoined(answer) {
    // Back on /signal with our old peer id: our addresses may have changed (a network
    // switch), so restart ICE towards everyone still here; new peers get a fresh link.
    const here = new Set((answer.peers ?? []).filter((p) => p.status === 'admitted').map((p) => p.peer_id));
    for (const [id, peer] of this.peers) {
      if (!here.has(id)) this.drop(id);
      else peer.restart();
    }
    for (const p of answer.peers ?? []) {
      if (p.status === 'admitted' && !this.peers.has(p.peer_id)) this.linkTo(p.peer_id, p.polite);
    }
  }

  drop(peerId, { quiet = false } = {}) {
    const peer = this.peers.get(peerId);
    if (peer) {
      peer.close();
      this.peers.delete(peerId);
    }
    if (!quiet && (peer || this.sfu)) this.fire('gone', { peerId, left: this.sfu ? this.roster.size : this.peers.size });
  }

  async setAudioOnly(on) {
    this.audioOnly = on;
    for (const peer of this.peers.values()) await peer.setAudioOnly(on);
    await this.sfu?.setAudioOnly(on);
  }

  async replaceTrack(track) {
    for (const peer of this.peers.values()) await peer.replaceTrack(track);
    await this.sfu?.replaceTrack(track);
  }

  /** `getStats()` of every link, for the page's figures and the tests. */
  async stats() {
    const out = {};
    for (const [id, peer] of this.peers) out[id] = await peer.stats();
    if (this.sfu) out.sfu = await this.sfu.stats();
    return out;
  }

  end(reason = 'left') {
    if (this.over) return;
    this.over = true;
    for (const id of [...this.peers.keys()]) this.drop(id, { quiet: true });
    this.sfu?.close();
    this.sfu = null;
    for (const [name, fn] of Object.entries(this.handlers)) this.link.removeEventListener(name, fn);
    this.fire('ended', { reason });
  }
}
