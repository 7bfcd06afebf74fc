// A device's chat keys in the browser: X25519 (others seal message keys to it) and
// Ed25519 (it signs every envelope). Generated with the Web Crypto API as CryptoKeys whose
// private halves are NOT extractable, and kept in IndexedDB (structured clone keeps them
// opaque: page script can use them but never read their bytes). Where a browser lacks
// X25519 or Ed25519 in Web Crypto, the noble implementations stand in with raw bytes.
import { objectStore } from './idb.js';
import { ed25519, x25519 } from './primitives.js';

const subtle = globalThis.crypto.subtle;
const PKCS8_X25519 = [0x30, 0x2e, 2, 1, 0, 0x30, 5, 6, 3, 0x2b, 0x65, 0x6e, 4, 0x22, 4, 0x20];
const PKCS8_ED25519 = [0x30, 0x2e, 2, 1, 0, 0x30, 5, 6, 3, 0x2b, 0x65, 0x70, 4, 0x22, 4, 0x20];

async function webCryptoPair(name, usages) {
  const pair = await subtle.generateKey({ name }, false, usages);
  const pub = new Uint8Array(await subtle.exportKey('raw', pair.publicKey));
  return { privateKey: pair.privateKey, publicRaw: pub };
}

/** Fresh device keys: `{x25519Private, x25519Public, ed25519Private, ed25519Public, webCrypto}`. */
export async function generateDeviceKeys() {
  try {
    const x = await webCryptoPair('X25519', ['deriveBits']);
    const e = await webCryptoPair('Ed25519', ['sign', 'verify']);
    return {
      x25519Private: x.privateKey, x25519Public: x.publicRaw,
      ed25519Private: e.privateKey, ed25519Public: e.publicRaw, webCrypto: true,
    };
  } catch {
    const xs = x25519.utils.randomSecretKey();
    const es = ed25519.utils.randomSecretKey();
    return {
      x25519Private: xs, x25519Public: x25519.getPublicKey(xs),
      ed25519Private: es, ed25519Public: ed25519.getPublicKey(es), webCrypto: false,
    };
  }
}

/**
 * Keys from the reference client's `DeviceKeys.private_bytes()` (X25519 private key then
 * Ed25519 seed, 64 bytes), imported as non-extractable CryptoKeys. For tests and for moving
 * a device's keys in; pages never export keys.
 */
export async function deviceKeysFromPrivateBytes(data) {
  if (data.length !== 64) throw new Error('device keys are 64 bytes');
  const xs = data.slice(0, 32);
  const es = data.slice(32);
  const pkcs8 = (prefix, raw) => new Uint8Array([...prefix, ...raw]);
  return {
    x25519Private: await subtle.importKey('pkcs8', pkcs8(PKCS8_X25519, xs), { name: 'X25519' }, false, ['deriveBits']),
    x25519Public: x25519.getPublicKey(xs),
    ed25519Private: await subtle.importKey('pkcs8', pkcs8(PKCS8_ED25519, es), { name: 'Ed25519' }, false, ['sign']),
    ed25519Public: ed25519.getPublicKey(es),
    webCrypto: true,
  };
}

/** X25519(private, peerPublic): 32 bytes. Fails on a low-order peer key. */
export async function deriveShared(keys, peerPublic) {
  if (!(keys.x25519Private instanceof Uint8Array)) {
    const peer = await subtle.importKey('raw', peerPublic, { name: 'X25519' }, true, []);
    const bits = await subtle.deriveBits({ name: 'X25519', public: peer }, keys.x25519Private, 256);
    return new Uint8Array(bits);
  }
  return x25519.getSharedSecret(keys.x25519Private, peerPublic);
}

/** Ed25519 (RFC 8032, pure) signature of `bytes` by the device. */
export async function signBytes(keys, bytes) {
  if (!(keys.ed25519Private instanceof Uint8Array)) {
    return new Uint8Array(await subtle.sign({ name: 'Ed25519' }, keys.ed25519Private, bytes));
  }
  return ed25519.sign(bytes, keys.ed25519Private);
}

// -- IndexedDB: one record per signed-in user on this browser ------------------------------

const STORE = 'devices';
const run = objectStore('teleconsult-chat', STORE, (db) => db.createObjectStore(STORE, { keyPath: 'userId' }));

/** `{userId, deviceId, keys}` saved for this user on this browser, or undefined. */
export function loadDevice(userId) {
  return run('readonly', (s) => s.get(userId));
}

export function saveDevice(record) {
  return run('readwrite', (s) => s.put(record));
}

export function forgetDevice(userId) {
  return run('readwrite', (s) => s.delete(userId));
}
