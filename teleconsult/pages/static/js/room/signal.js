// One /signal connection holding at most one peer (docs/signaling.md). It keeps the peer
// across dropped connections: on every reconnect it joins again with its peer id, within
// the server's grace period, so a network change does not send anyone back to the waiting
// room. Events are re-dispatched as DOM events with the server's names.
import { io } from '../../vendor/socket.io-client.js';

const PUSHED = [
  'waiting', 'waiting_left', 'admitted', 'declined', 'removed', 'peer_joined', 'peer_left',
  'peer_disconnected', 'peer_reconnected', 'signal', 'ice_servers', 'bye',
  'mode', 'sfu_published', 'recording',
];
const ACK_TIMEOUT_MS = 10000;

export class SignalLink extends EventTarget {
  constructor({ roomId, token, refused }) {
    super();
    this.roomId = roomId;
    this.token = token; // () => access token (or a promise of one)
    this.refused = refused; // (connect_error) => void: e.g. mark the token stale
    this.peerId = null;
    this.state = null; // the last join/admitted answer
    this.wanted = false;
    this.socket = io('/signal', {
      path: '/socket.io/',
      forceNew: true, // one engine per room: a doctor holds a peer in each room of the day
      transports: ['websocket', 'polling'],
      tryAllTransports: true,
      reconnectionDelayMax: 5000,
      autoConnect: false,
      auth: (cb) => { Promise.resolve(this.token()).then((token) => cb({ token })); },
    });
    for (const name of PUSHED) this.socket.on(name, (data) => this.onPushed(name, data));
    this.socket.on('connect', () => this.onConnect());
    this.socket.on('disconnect', (reason) => this.fire('link', { up: false, reason }));
    this.socket.on('connect_error', (err) => {
      this.refused?.(err);
      this.fire('link', { up: false, reason: 'connect_error' });
      if (!this.socket.active) setTimeout(() => this.socket.connect(), 1000 + Math.random() * 1000);
    });
  }

  fire(name, detail) {
    this.dispatchEvent(new CustomEvent(name, { detail }));
  }

  onPushed(name, data) {
    if (name === 'admitted') this.state = data;
    if (name === 'declined' || name === 'removed') { this.peerId = null; this.wanted = false; }
    if (name === 'ice_servers' && this.state) this.state.ice_servers = data.ice_servers;
    this.fire(name, data);
  }

  async onConnect() {
    this.fire('link', { up: true, transport: this.socket.io.engine.transport.name });
    if (!this.wanted) return;
    const before = this.peerId;
    const answer = await this.join();
    // Back with the same peer id: our place is kept. After the grace period the server
    // gives a new one (a newcomer, waiting again).
    if (answer.ok) this.fire(before && answer.peer_id === before ? 'rejoined' : 'joined', answer);
    else this.fire('refused', answer.error);
  }

  request(event, data) {
    return new Promise((resolve) => {
      if (!this.socket.connected) { resolve({ ok: false, error: { code: 'disconnected' } }); return; }
      this.socket.timeout(ACK_TIMEOUT_MS).emit(event, data, (err, ack) => {
        resolve(err ? { ok: false, error: { code: 'timeout' } } : ack);
      });
    });
  }

  async join() {
    const data = { room_id: this.roomId };
    if (this.peerId) data.peer_id = this.peerId;
    const answer = await this.request('join', data);
    if (answer.ok) {
      this.peerId = answer.peer_id;
      this.state = answer;
    } else if (this.peerId && ['not_found', 'validation_failed'].includes(answer.error?.code)) {
      this.peerId = null; // the grace period ran out: join as a newcomer
      return this.join();
    }
    return answer;
  }

  /** Connect and join; later reconnects rejoin with the same peer id. */
  enter() {
    this.wanted = true;
    if (this.socket.connected) return this.onConnect();
    this.socket.connect();
    return undefined;
  }

  async leave() {
    this.wanted = false;
    if (this.peerId) await this.request('leave', {});
    this.peerId = null;
    this.socket.disconnect();
  }

  send(to, message) {
    return this.request('signal', { to, ...message });
  }

  admit(peerId) { return this.request('admit', { peer_id: peerId }); }

  decline(peerId) { return this.request('decline', { peer_id: peerId }); }

  remove(peerId) { return this.request('remove', { peer_id: peerId }); }

  invite(userId) { return this.request('invite', { user_id: userId }); }
}
