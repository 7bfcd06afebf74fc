// Ed25519 (device signatures) and X25519 (sealed boxes) from @noble/curves.
export { ed25519, x25519 } from "@noble/curves/ed25519.js";
