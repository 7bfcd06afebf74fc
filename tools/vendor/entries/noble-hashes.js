// BLAKE2b (the sealed box's nonce) and SHA-256 from @noble/hashes.
export { blake2b } from "@noble/hashes/blake2.js";
export { sha256, sha512 } from "@noble/hashes/sha2.js";
export { randomBytes, utf8ToBytes, bytesToHex, hexToBytes } from "@noble/hashes/utils.js";
