// The cryptographic primitives of the chat envelope (docs/protocol.md), in one place.
// Everything comes from the vendored noble libraries or the Web Crypto API; HSalsa20
// (libsodium's crypto_box key derivation) is written out here because it is 30 lines
// and the noble bundle does not promise to export it.
import * as ciphers from '../../vendor/noble-ciphers.js';
import * as curves from '../../vendor/noble-curves.js';
import * as hashes from '../../vendor/noble-hashes.js';

function need(mod, name, file) {
  const value = mod[name];
  if (!value) throw new Error(`${file} does not export ${name}`);
  return value;
}

export const xchacha20poly1305 = need(ciphers, 'xchacha20poly1305', 'noble-ciphers.js');
export const xsalsa20poly1305 = need(ciphers, 'xsalsa20poly1305', 'noble-ciphers.js');
export const ed25519 = need(curves, 'ed25519', 'noble-curves.js');
export const x25519 = need(curves, 'x25519', 'noble-curves.js');
export const blake2b = need(hashes, 'blake2b', 'noble-hashes.js');

export function randomBytes(n) {
  return globalThis.crypto.getRandomValues(new Uint8Array(n));
}

const SIGMA = [0x61707865, 0x3320646e, 0x79622d32, 0x6b206574]; // "expand 32-byte k"

function rotl(a, b) {
  return (a << b) | (a >>> (32 - b));
}

/** HSalsa20(key, input16): libsodium's crypto_core_hsalsa20 with the sigma constant. */
export function hsalsa20(key, input) {
  const kv = new DataView(key.buffer, key.byteOffset, 32);
  const iv = new DataView(input.buffer, input.byteOffset, 16);
  const k = (i) => kv.getUint32(4 * i, true);
  const n = (i) => iv.getUint32(4 * i, true);
  const x = new Uint32Array([
    SIGMA[0], k(0), k(1), k(2), k(3), SIGMA[1], n(0), n(1),
    n(2), n(3), SIGMA[2], k(4), k(5), k(6), k(7), SIGMA[3],
  ]);
  const qr = (a, b, c, d) => {
    x[b] ^= rotl((x[a] + x[d]) | 0, 7);
    x[c] ^= rotl((x[b] + x[a]) | 0, 9);
    x[d] ^= rotl((x[c] + x[b]) | 0, 13);
    x[a] ^= rotl((x[d] + x[c]) | 0, 18);
  };
  for (let i = 0; i < 20; i += 2) {
    qr(0, 4, 8, 12); qr(5, 9, 13, 1); qr(10, 14, 2, 6); qr(15, 3, 7, 11);
    qr(0, 1, 2, 3); qr(5, 6, 7, 4); qr(10, 11, 8, 9); qr(15, 12, 13, 14);
  }
  const out = new Uint8Array(32);
  const ov = new DataView(out.buffer);
  [0, 5, 10, 15, 6, 7, 8, 9].forEach((w, i) => ov.setUint32(4 * i, x[w], true));
  return out;
}
