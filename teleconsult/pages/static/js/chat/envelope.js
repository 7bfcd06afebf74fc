// The chat envelope, version 1, built and opened in the browser: exactly docs/protocol.md.
// The reference is teleconsult/messaging/envelope.py and teleconsult/client/crypto.py;
// tests/browser/test_envelope_node.py checks this module against them both ways and
// against the protocol's test vector.
import { encode as msgpackEncode, decode as msgpackDecode } from '../../vendor/msgpack.js';
import {
  blake2b, ed25519, hsalsa20, randomBytes, x25519, xchacha20poly1305, xsalsa20poly1305,
} from './primitives.js';
import { deriveShared, signBytes } from './keys.js';

export const VERSION = 1;
export const MAX_RECIPIENTS = 64;
export const SEALED_KEY_BYTES = 80;
const SIGNING_DOMAIN = new TextEncoder().encode('teleconsult/envelope/v1\0');
const AD_DOMAIN = new TextEncoder().encode('teleconsult/body/v1\0');
const CLIENT_MSG_ID = /^[A-Za-z0-9_-]{16,64}$/;
const UUID_TEXT = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

export class EnvelopeError extends Error {
  constructor(code, detail) {
    super(detail);
    this.code = code; // malformed, bad_field, bad_signature, not_a_recipient, decrypt_failed
  }
}

// -- bytes ----------------------------------------------------------------------------

export function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) { out.set(p, at); at += p.length; }
  return out;
}

function uint(value, size) {
  const out = new Uint8Array(size);
  let v = BigInt(value);
  for (let i = size - 1; i >= 0; i -= 1) { out[i] = Number(v & 0xffn); v >>= 8n; }
  return out;
}

export function b64url(bytes) {
  let s = '';
  for (const b of bytes) s += String.fromCharCode(b);
  return btoa(s).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

export function fromB64url(text, field) {
  if (typeof text !== 'string' || !/^[A-Za-z0-9_-]*$/.test(text) || text.length % 4 === 1) {
    throw new EnvelopeError('bad_field', `${field}: must be unpadded base64url`);
  }
  const s = atob(text.replace(/-/g, '+').replace(/_/g, '/') + '='.repeat((4 - (text.length % 4)) % 4));
  const out = Uint8Array.from(s, (c) => c.charCodeAt(0));
  if (b64url(out) !== text) throw new EnvelopeError('bad_field', `${field}: must be canonical base64url`);
  return out;
}

export function uuidBytes(text, field = 'uuid') {
  const t = String(text).toLowerCase();
  if (!UUID_TEXT.test(t)) throw new EnvelopeError('bad_field', `${field}: must be a UUID`);
  const hex = t.replace(/-/g, '');
  return Uint8Array.from({ length: 16 }, (_, i) => parseInt(hex.slice(2 * i, 2 * i + 2), 16));
}

export function uuidText(bytes, field = 'uuid') {
  if (!(bytes instanceof Uint8Array) || bytes.length !== 16) {
    throw new EnvelopeError('bad_field', `${field}: must be a 16-byte UUID`);
  }
  const h = Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

export function newClientMsgId() {
  return b64url(randomBytes(16)); // 128 random bits, 22 characters, as the reference client
}

// -- canonical bytes --------------------------------------------------------------------

export function associatedData(env) {
  const cmid = new TextEncoder().encode(env.client_msg_id);
  return concat(
    AD_DOMAIN, uint(env.v, 2), uuidBytes(env.thread_id), uuidBytes(env.sender_device_id),
    uint(cmid.length, 1), cmid,
  );
}

export function signingBytes(env) {
  const cmid = new TextEncoder().encode(env.client_msg_id);
  const sentAt = env.sent_at_ms == null
    ? new Uint8Array([0]) : concat(new Uint8Array([1]), uint(env.sent_at_ms, 8));
  const parts = [
    SIGNING_DOMAIN, uint(env.v, 2), uint(cmid.length, 1), cmid,
    uuidBytes(env.thread_id), uuidBytes(env.sender_device_id), sentAt, env.nonce,
    uint(env.ciphertext.length, 4), env.ciphertext, uint(env.keys.length, 2),
  ];
  for (const [deviceId, sealed] of env.keys) parts.push(uuidBytes(deviceId), sealed);
  return concat(...parts);
}

// -- checks -------------------------------------------------------------------------------

function checkBytes(field, value, { size, least = 0 } = {}) {
  if (!(value instanceof Uint8Array)) throw new EnvelopeError('bad_field', `${field}: must be bytes`);
  if (size !== undefined && value.length !== size) {
    throw new EnvelopeError('bad_field', `${field}: must be exactly ${size} bytes, got ${value.length}`);
  }
  if (value.length < least) throw new EnvelopeError('bad_field', `${field}: must be at least ${least} bytes`);
}

/** The envelope if every field holds (as the server's Envelope.__post_init__ checks). */
export function checkEnvelope(env) {
  if (env.v !== VERSION) throw new EnvelopeError('unsupported_version', `v: ${env.v} is not supported`);
  if (typeof env.client_msg_id !== 'string' || !CLIENT_MSG_ID.test(env.client_msg_id)) {
    throw new EnvelopeError('bad_field', 'client_msg_id: must be 16 to 64 characters of A-Z a-z 0-9 - _');
  }
  uuidBytes(env.thread_id, 'thread_id');
  uuidBytes(env.sender_device_id, 'sender_device_id');
  const at = env.sent_at_ms;
  if (at != null && !(Number.isSafeInteger(at) && at >= 0)) {
    throw new EnvelopeError('bad_field', 'sent_at_ms: must be null or an integer from 0 to 2^53 - 1');
  }
  checkBytes('nonce', env.nonce, { size: 24 });
  checkBytes('ciphertext', env.ciphertext, { least: 16 });
  if (!Array.isArray(env.keys) || env.keys.length < 1 || env.keys.length > MAX_RECIPIENTS) {
    throw new EnvelopeError('bad_field', `keys: 1 to ${MAX_RECIPIENTS} recipients`);
  }
  const seen = new Set();
  env.keys.forEach(([deviceId, sealed], i) => {
    const id = uuidText(uuidBytes(deviceId, `keys[${i}].device_id`));
    checkBytes(`keys[${i}].sealed_key`, sealed, { size: SEALED_KEY_BYTES });
    if (seen.has(id)) throw new EnvelopeError('duplicate_recipient', `keys[${i}]: device ${id} twice`);
    seen.add(id);
  });
  checkBytes('signature', env.signature, { size: 64 });
  return env;
}

// -- the two encodings ------------------------------------------------------------------

export function toJson(env) {
  const obj = {
    v: env.v, client_msg_id: env.client_msg_id,
    thread_id: env.thread_id, sender_device_id: env.sender_device_id,
  };
  if (env.sent_at_ms != null) obj.sent_at_ms = env.sent_at_ms;
  obj.nonce = b64url(env.nonce);
  obj.ciphertext = b64url(env.ciphertext);
  obj.keys = env.keys.map(([id, sealed]) => ({ device_id: id, sealed_key: b64url(sealed) }));
  obj.signature = b64url(env.signature);
  return obj;
}

export function fromJson(obj) {
  if (!obj || typeof obj !== 'object' || !Array.isArray(obj.keys)) {
    throw new EnvelopeError('malformed', 'an envelope is a JSON object with keys');
  }
  return checkEnvelope({
    v: obj.v,
    client_msg_id: obj.client_msg_id,
    thread_id: String(obj.thread_id).toLowerCase(),
    sender_device_id: String(obj.sender_device_id).toLowerCase(),
    sent_at_ms: obj.sent_at_ms ?? null,
    nonce: fromB64url(obj.nonce, 'nonce'),
    ciphertext: fromB64url(obj.ciphertext, 'ciphertext'),
    keys: obj.keys.map((k, i) => [
      String(k.device_id).toLowerCase(), fromB64url(k.sealed_key, `keys[${i}].sealed_key`),
    ]),
    signature: fromB64url(obj.signature, 'signature'),
  });
}

export function toMsgpack(env) {
  return msgpackEncode([
    env.v, env.client_msg_id, uuidBytes(env.thread_id), uuidBytes(env.sender_device_id),
    env.sent_at_ms ?? null, env.nonce, env.ciphertext,
    env.keys.map(([id, sealed]) => [uuidBytes(id), sealed]), env.signature,
  ]);
}

export function fromMsgpack(data) {
  let a;
  try {
    a = msgpackDecode(data instanceof Uint8Array ? data : new Uint8Array(data));
  } catch (err) {
    throw new EnvelopeError('malformed', `not valid msgpack (${err.message})`);
  }
  if (!Array.isArray(a) || a.length !== 9 || !Array.isArray(a[7])) {
    throw new EnvelopeError('malformed', 'an envelope is a msgpack array of 9 items');
  }
  return checkEnvelope({
    v: a[0], client_msg_id: a[1],
    thread_id: uuidText(a[2], 'thread_id'), sender_device_id: uuidText(a[3], 'sender_device_id'),
    sent_at_ms: typeof a[4] === 'bigint' ? Number(a[4]) : a[4], nonce: a[5], ciphertext: a[6],
    keys: a[7].map((k, i) => [uuidText(k?.[0], `keys[${i}].device_id`), k?.[1]]),
    signature: a[8],
  });
}

/** An envelope as it arrives from /chat or REST: msgpack bytes or the JSON object. */
export function decodeEnvelope(wire) {
  if (wire instanceof Uint8Array || wire instanceof ArrayBuffer) return fromMsgpack(wire);
  return fromJson(wire);
}

// -- sealing and opening ------------------------------------------------------------------

const ZERO16 = new Uint8Array(16);

function boxKey(shared) {
  if (shared.every((b) => b === 0)) throw new EnvelopeError('bad_field', 'unusable X25519 key');
  return hsalsa20(shared, ZERO16);
}

/** libsodium crypto_box_seal: ephemeral X25519, XSalsa20-Poly1305, nonce BLAKE2b-24(epk‖pk). */
export function sealFor(message, publicKey) {
  const esk = randomBytes(32);
  const epk = x25519.getPublicKey(esk);
  let shared;
  try {
    shared = x25519.getSharedSecret(esk, publicKey);
  } catch {
    throw new EnvelopeError('bad_field', 'unusable X25519 key');
  }
  const nonce = blake2b(concat(epk, publicKey), { dkLen: 24 });
  esk.fill(0);
  return concat(epk, xsalsa20poly1305(boxKey(shared), nonce).encrypt(message));
}

/** crypto_box_seal_open with the device's X25519 key (a CryptoKey when it can be one). */
export async function openSealed(sealed, keys) {
  const epk = sealed.subarray(0, 32);
  const nonce = blake2b(concat(epk, keys.x25519Public), { dkLen: 24 });
  const shared = await deriveShared(keys, epk);
  return xsalsa20poly1305(boxKey(shared), nonce).decrypt(sealed.subarray(32));
}

/**
 * Encrypt `plaintext` (bytes) once and seal its key for every device of `recipients`
 * (a Map or object: device id → 32-byte X25519 public key). The sender's own device is
 * added if missing. Send the result again, unchanged, to retry.
 */
export async function seal({ plaintext, threadId, keys, deviceId, recipients, clientMsgId, sentAtMs }) {
  const everyone = new Map(recipients instanceof Map ? recipients : Object.entries(recipients));
  everyone.set(deviceId, keys.x25519Public);
  if (everyone.size > MAX_RECIPIENTS) throw new EnvelopeError('too_many_recipients', 'too many devices');
  const messageKey = randomBytes(32);
  const env = {
    v: VERSION,
    client_msg_id: clientMsgId ?? newClientMsgId(),
    thread_id: threadId.toLowerCase(),
    sender_device_id: deviceId.toLowerCase(),
    sent_at_ms: sentAtMs ?? null,
    nonce: randomBytes(24),
  };
  env.ciphertext = xchacha20poly1305(messageKey, env.nonce, associatedData(env)).encrypt(plaintext);
  env.keys = [...everyone].map(([id, pk]) => [id.toLowerCase(), sealFor(messageKey, pk)]);
  env.signature = await signBytes(keys, signingBytes(env));
  messageKey.fill(0);
  return checkEnvelope(env);
}

export function verify(env, senderSigningKey) {
  let ok = false;
  try {
    ok = ed25519.verify(env.signature, signingBytes(env), senderSigningKey, { zip215: false });
  } catch {
    ok = false;
  }
  if (!ok) throw new EnvelopeError('bad_signature', "the signature does not match the sender device's key");
}

/** The plaintext bytes of `env`, after checking it was signed by `senderSigningKey`. */
export async function openEnvelope(env, { keys, deviceId, senderSigningKey }) {
  verify(env, senderSigningKey);
  const me = deviceId.toLowerCase();
  const entry = env.keys.find(([id]) => id === me);
  if (!entry) throw new EnvelopeError('not_a_recipient', `device ${me} is not a recipient`);
  let messageKey;
  try {
    messageKey = await openSealed(entry[1], keys);
  } catch {
    throw new EnvelopeError('decrypt_failed', "the message cannot be decrypted with this device's key");
  }
  if (messageKey.length !== 32) throw new EnvelopeError('decrypt_failed', 'bad message key');
  try {
    return xchacha20poly1305(messageKey, env.nonce, associatedData(env)).decrypt(env.ciphertext);
  } catch {
    throw new EnvelopeError('decrypt_failed', "the message cannot be decrypted with this device's key");
  }
}
