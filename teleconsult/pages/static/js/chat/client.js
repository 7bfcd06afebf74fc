// End-to-end encrypted chat in the page: the device, /chat over Socket.IO, exactly-once
// in-order delivery with resume, and an outbox that never loses what a person typed.
// The rules are docs/chat-client.md's ("What the client must get right"); the Python
// reference is teleconsult/client/chat.py.
import { io } from '../../vendor/socket.io-client.js';
import {
  EnvelopeError, b64url, decodeEnvelope, fromB64url, fromJson, openEnvelope, seal, toJson, toMsgpack,
} from './envelope.js';
import { forgetDevice, generateDeviceKeys, loadDevice, saveDevice } from './keys.js';
import { dropUnsent, listUnsent, putUnsent } from './store.js';

const RETRYABLE = new Set(['internal_error', 'unavailable', 'rate_limited', 'timeout', 'disconnected']);
const ACK_TIMEOUT_MS = 10000;
const text = new TextDecoder();

/**
 * `api(path, opts)` and `token()` come from the page (static/js/api.js): the client never
 * holds credentials of its own. Events (EventTarget): `message` {threadId, seq, text, mine,
 * senderUserId, createdAt, error}, `outbox` {items}, `state` {connected, transport}.
 */
export class ChatClient extends EventTarget {
  constructor({ api, token, userId, label = 'Browser', refused }) {
    super();
    this.api = api;
    this.token = token;
    this.refused = refused;
    this.userId = userId;
    this.label = label;
    this.threads = new Map(); // threadId -> {last, devices: Map(id -> device), seen: Set(seq)}
    this.outbox = []; // {clientMsgId, threadId, env, text, status, code, tries}
    this.device = null;
    this.socket = null;
    this.flushing = false;
  }

  // -- the device --------------------------------------------------------------------

  async ensureDevice() {
    const saved = await loadDevice(this.userId);
    if (saved) {
      const mine = await this.api('/api/v1/devices');
      if (mine.items.some((d) => d.id === saved.deviceId)) {
        this.device = saved;
        return saved;
      }
      await forgetDevice(this.userId); // revoked from "my devices" (here or elsewhere)
    }
    const keys = await generateDeviceKeys();
    const registered = await this.api('/api/v1/devices', {
      method: 'POST',
      body: { x25519_public: b64url(keys.x25519Public), ed25519_public: b64url(keys.ed25519Public), label: this.label },
    });
    this.device = { userId: this.userId, deviceId: registered.id, keys };
    await saveDevice(this.device);
    return this.device;
  }

  get deviceId() {
    return this.device?.deviceId;
  }

  // -- connecting --------------------------------------------------------------------

  get encoding() {
    // On long-polling, binary attachments travel base64-encoded: JSON is cheaper there.
    return this.socket?.io?.engine?.transport?.name === 'websocket' ? 'msgpack' : 'json';
  }

  async start() {
    await this.ensureDevice();
    for (const entry of await listUnsent(this.userId)) await this.restoreUnsent(entry);
    this.socket = io('/chat', {
      path: '/socket.io/',
      // WebSocket first; when it is blocked (a proxy, a firewall) long-polling takes over.
      transports: ['websocket', 'polling'],
      tryAllTransports: true,
      reconnectionDelayMax: 5000,
      randomizationFactor: 0.5,
      auth: (cb) => { Promise.resolve(this.token()).then((token) => cb({ token, encoding: this.encoding })); },
    });
    this.socket.on('connect', () => {
      this.emit('state', { connected: true, transport: this.socket.io.engine.transport.name });
      this.resumeAll();
      this.flush();
    });
    this.socket.on('disconnect', () => this.emit('state', { connected: false }));
    this.socket.on('connect_error', (err) => {
      this.refused?.(err);
      this.emit('state', { connected: false });
      // A refused handshake (expired token) is not retried by socket.io: try again ourselves.
      if (!this.socket.active) setTimeout(() => this.socket.connect(), 1000 + Math.random() * 1000);
    });
    this.socket.on('bye', () => this.emit('state', { connected: false }));
    this.socket.on('sync', () => this.resumeAll());
    this.socket.on('message', (data) => this.onPushed(data));
  }

  stop() {
    this.socket?.disconnect();
  }

  call(event, data, timeoutMs = ACK_TIMEOUT_MS) {
    return new Promise((resolve) => {
      if (!this.socket?.connected) { resolve({ ok: false, error: { code: 'disconnected' } }); return; }
      this.socket.timeout(timeoutMs).emit(event, data, (err, ack) => {
        resolve(err ? { ok: false, error: { code: 'timeout' } } : ack);
      });
    });
  }

  emit(name, detail) {
    this.dispatchEvent(new CustomEvent(name, { detail }));
  }

  // -- receiving -----------------------------------------------------------------------

  thread(threadId) {
    if (!this.threads.has(threadId)) this.threads.set(threadId, { last: 0, devices: new Map(), seen: new Set() });
    return this.threads.get(threadId);
  }

  /** Follow a thread from the start: its whole history arrives as `message` events. */
  follow(threadId) {
    this.thread(threadId);
    if (this.socket?.connected) this.resume([threadId]);
  }

  async threadDevices(threadId) {
    const answer = await this.api(`/api/v1/threads/${threadId}/devices`, { retries: 1, timeoutMs: 8000 });
    const t = this.thread(threadId);
    for (const d of answer.items) t.devices.set(d.id, d);
    t.current = answer.items;
    return answer.items;
  }

  /** Whom to seal for: the thread's devices now, or offline the last list we had. */
  async recipientsOf(threadId) {
    try {
      return await this.threadDevices(threadId);
    } catch (err) {
      const known = this.thread(threadId).current;
      if (known) return known;
      throw err;
    }
  }

  async senderKey(threadId, deviceId) {
    const t = this.thread(threadId);
    if (!t.devices.has(deviceId)) await this.threadDevices(threadId);
    const d = t.devices.get(deviceId);
    return d ? fromB64url(d.ed25519_public, 'ed25519_public') : null;
  }

  onPushed(data) {
    const t = this.threads.get(data.thread_id);
    if (!t) return;
    if (data.seq <= t.last) return; // a copy (a resend is pushed again)
    if (data.seq === t.last + 1) this.deliver(data);
    else this.resume([data.thread_id]); // a gap: ask for what is missing
  }

  deliver(data) {
    const t = this.thread(data.thread_id);
    t.last = Math.max(t.last, data.seq);
    if (t.seen.has(data.seq)) return Promise.resolve();
    t.seen.add(data.seq);
    const mine = data.sender_device_id === this.deviceId;
    // Decryption is asynchronous; order is kept by seq, which the page sorts on.
    return this.open(data).then((plain) => {
      this.emit('message', {
        threadId: data.thread_id, seq: data.seq, text: plain, mine, senderUserId: data.sender_user_id,
        createdAt: data.created_at, clientMsgId: data.client_msg_id, error: null,
      });
    }, (err) => {
      this.emit('message', {
        threadId: data.thread_id, seq: data.seq, text: null, mine, senderUserId: data.sender_user_id,
        createdAt: data.created_at, clientMsgId: data.client_msg_id, error: err.code ?? 'decrypt_failed',
      });
    });
  }

  async open(data) {
    const env = decodeEnvelope(data.envelope);
    const key = await this.senderKey(data.thread_id, data.sender_device_id);
    if (!key) throw new EnvelopeError('bad_signature', 'unknown sender device');
    const plain = await openEnvelope(env, { keys: this.device.keys, deviceId: this.deviceId, senderSigningKey: key });
    return text.decode(plain);
  }

  resumeAll() {
    return this.resume([...this.threads.keys()]);
  }

  async resume(threadIds) {
    let pending = threadIds;
    while (pending.length && this.socket?.connected) {
      const threads = Object.fromEntries(pending.map((id) => [id, this.thread(id).last]));
      const ack = await this.call('resume', { threads, limit: 200 });
      if (!ack?.ok) return;
      const again = [];
      for (const [id, result] of Object.entries(ack.threads)) {
        if (!result.ok) continue;
        for (const m of result.messages) {
          if (m.seq > this.thread(id).last) await this.deliver(m);
        }
        if (!result.complete) again.push(id);
      }
      pending = again;
    }
  }

  // -- sending -------------------------------------------------------------------------

  /** Seal and queue `message`; it shows as unsent until the server has stored it. */
  async send(threadId, message) {
    const env = await this.sealFor(threadId, message);
    const item = { clientMsgId: env.client_msg_id, threadId, env, text: message, status: 'unsent', tries: 0 };
    this.outbox.push(item);
    await putUnsent({ clientMsgId: item.clientMsgId, userId: this.userId, threadId, envelope: toJson(env), queuedAt: Date.now() });
    this.emitOutbox();
    this.flush();
    return item;
  }

  async sealFor(threadId, message) {
    const devices = await this.recipientsOf(threadId);
    const recipients = new Map(devices.map((d) => [d.id, fromB64url(d.x25519_public, 'x25519_public')]));
    return seal({
      plaintext: new TextEncoder().encode(message), threadId, keys: this.device.keys,
      deviceId: this.deviceId, recipients, sentAtMs: Date.now(),
    });
  }

  async restoreUnsent(entry) {
    try {
      const env = fromJson(entry.envelope);
      const plain = await openEnvelope(env, {
        keys: this.device.keys, deviceId: this.deviceId, senderSigningKey: this.device.keys.ed25519Public,
      });
      this.outbox.push({ clientMsgId: entry.clientMsgId, threadId: entry.threadId, env, text: text.decode(plain), status: 'unsent', tries: 0 });
    } catch {
      await dropUnsent(entry.clientMsgId); // sealed by a device this browser no longer has
    }
  }

  emitOutbox() {
    this.emit('outbox', { items: this.outbox.map(({ clientMsgId, threadId, text: body, status, code }) => ({ clientMsgId, threadId, text: body, status, code })) });
  }

  /** Send the outbox in order, each item until the server answers it; back off on failures. */
  async flush() {
    if (this.flushing) return;
    this.flushing = true;
    try {
      while (this.socket?.connected) {
        const item = this.outbox.find((i) => i.status === 'unsent');
        if (!item) break;
        const envelope = this.encoding === 'msgpack' ? toMsgpack(item.env) : toJson(item.env);
        const ack = await this.call('send', { thread_id: item.threadId, envelope });
        if (ack?.ok) {
          await this.sent(item, ack);
          continue;
        }
        const code = ack?.error?.code ?? 'timeout';
        if (code === 'device_not_usable') {
          await this.replaceDevice(item);
          continue;
        }
        if (code === 'not_a_recipient' && !item.resealed) {
          // Sealed offline for an old device list: seal again for the thread's devices now.
          item.resealed = true;
          await this.reseal(item);
          continue;
        }
        if (!RETRYABLE.has(code)) {
          item.status = 'failed';
          item.code = code;
          await dropUnsent(item.clientMsgId);
          this.emitOutbox();
          continue;
        }
        item.tries += 1;
        const waitMs = ack?.error?.retry_after ? ack.error.retry_after * 1000
          : Math.min(5000, 250 * 2 ** item.tries) * (0.5 + Math.random());
        if (code === 'timeout') this.socket.disconnect().connect(); // an unanswered call: distrust the link
        await new Promise((r) => setTimeout(r, waitMs));
      }
    } finally {
      this.flushing = false;
    }
  }

  async sent(item, ack) {
    this.outbox.splice(this.outbox.indexOf(item), 1);
    await dropUnsent(item.clientMsgId);
    this.emitOutbox();
    const t = this.thread(item.threadId);
    t.seen.add(ack.seq);
    if (ack.seq === t.last + 1) t.last = ack.seq; // else resume fills the gap (ours is skipped)
    this.emit('message', {
      threadId: item.threadId, seq: ack.seq, text: item.text, mine: true, senderUserId: this.userId,
      createdAt: ack.created_at, clientMsgId: item.clientMsgId, error: null,
    });
    if (ack.seq > t.last) this.resume([item.threadId]);
  }

  /** This device was revoked: register a new one and seal the waiting message again. */
  async replaceDevice(item) {
    await forgetDevice(this.userId);
    await this.ensureDevice();
    await this.reseal(item);
  }

  async reseal(item) {
    await dropUnsent(item.clientMsgId);
    item.env = await this.sealFor(item.threadId, item.text);
    item.clientMsgId = item.env.client_msg_id;
    await putUnsent({ clientMsgId: item.clientMsgId, userId: this.userId, threadId: item.threadId, envelope: toJson(item.env), queuedAt: Date.now() });
  }
}
