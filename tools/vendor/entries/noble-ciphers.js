// What the chat envelope needs from @noble/ciphers (docs/protocol.md): XChaCha20-Poly1305 for
// the message body, XSalsa20-Poly1305 and HSalsa20 for the libsodium sealed box.
import { xchacha20poly1305 } from "@noble/ciphers/chacha.js";
import { hsalsa, xsalsa20poly1305 } from "@noble/ciphers/salsa.js";

export { hsalsa, xchacha20poly1305, xsalsa20poly1305 };

// "expand 32-byte k" as little-endian words: the constant libsodium's crypto_core_hsalsa20 uses.
const SIGMA = new Uint32Array([0x61707865, 0x3320646e, 0x79622d32, 0x6b206574]);

function words(bytes) {
  const out = new Uint32Array(bytes.length / 4);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  for (let i = 0; i < out.length; i++) out[i] = view.getUint32(i * 4, true);
  return out;
}

/** libsodium's crypto_core_hsalsa20(input16, key32) with the default constant: 32 bytes.
 * crypto_box_beforenm(pk, sk) is hsalsa20(16 zero bytes, x25519(sk, pk)). */
export function hsalsa20(key, input = new Uint8Array(16)) {
  if (key.length !== 32 || input.length !== 16) throw new Error("hsalsa20: key 32, input 16 bytes");
  const out = new Uint32Array(8);
  hsalsa(SIGMA, words(key), words(input), out);
  const bytes = new Uint8Array(32);
  const view = new DataView(bytes.buffer);
  for (let i = 0; i < 8; i++) view.setUint32(i * 4, out[i], true);
  return bytes;
}
