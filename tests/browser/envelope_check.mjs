// Runs the browser's envelope code (teleconsult/pages/static/js/chat/) under Node for
// tests/browser/test_envelope_node.py. argv[2]: the static folder. stdin: one JSON command;
// stdout: one JSON answer. Bytes travel as hex.
import { pathToFileURL } from 'node:url';
import { readFileSync } from 'node:fs';

const root = process.argv[2];
const env = await import(pathToFileURL(`${root}/js/chat/envelope.js`).href);
const keysMod = await import(pathToFileURL(`${root}/js/chat/keys.js`).href);

const hex = (b) => Buffer.from(b).toString('hex');
const unhex = (s) => new Uint8Array(Buffer.from(s, 'hex'));

const cmd = JSON.parse(readFileSync(0, 'utf8'));

async function main() {
  switch (cmd.op) {
    case 'vector': {
      const e = {
        v: 1, client_msg_id: 'abcdefghijklmnopqrstuv',
        thread_id: '11111111-2222-4333-8444-555555555555',
        sender_device_id: '66666666-7777-4888-8999-aaaaaaaaaaaa',
        sent_at_ms: 1767225600000,
        nonce: Uint8Array.from({ length: 24 }, (_, i) => i),
        ciphertext: Uint8Array.from({ length: 16 }, (_, i) => 0x64 + i),
        keys: [['bbbbbbbb-cccc-4ddd-8eee-ffffffffffff', Uint8Array.from({ length: 80 }, (_, i) => i)]],
      };
      const priv = new Uint8Array(64);
      priv.set(Uint8Array.from({ length: 32 }, (_, i) => i), 32);
      priv[0] = 9; // any X25519 key: only the Ed25519 seed matters here
      const k = await keysMod.deviceKeysFromPrivateBytes(priv);
      const signing = env.signingBytes(e);
      e.signature = await keysMod.signBytes(k, signing);
      const packed = env.toMsgpack(e);
      const back = env.fromMsgpack(packed);
      return {
        signing_bytes: hex(signing), associated_data: hex(env.associatedData(e)),
        ed25519_public_key: hex(k.ed25519Public), signature: hex(e.signature),
        msgpack: hex(packed), msgpack_round_trip: hex(env.toMsgpack(back)),
        json: env.toJson(e),
      };
    }
    case 'seal': {
      const k = await keysMod.deviceKeysFromPrivateBytes(unhex(cmd.private));
      const recipients = new Map(Object.entries(cmd.recipients).map(([id, pk]) => [id, unhex(pk)]));
      const e = await env.seal({
        plaintext: unhex(cmd.plaintext), threadId: cmd.thread_id, keys: k,
        deviceId: cmd.device_id, recipients, sentAtMs: cmd.sent_at_ms,
      });
      return { json: env.toJson(e), msgpack: hex(env.toMsgpack(e)) };
    }
    case 'open': {
      const k = await keysMod.deviceKeysFromPrivateBytes(unhex(cmd.private));
      try {
        const e = cmd.msgpack ? env.fromMsgpack(unhex(cmd.msgpack)) : env.fromJson(cmd.json);
        const plain = await env.openEnvelope(e, {
          keys: k, deviceId: cmd.device_id, senderSigningKey: unhex(cmd.sender_signing_key),
        });
        return { plaintext: hex(plain) };
      } catch (err) {
        return { error: err.code ?? String(err) };
      }
    }
    case 'generate': {
      const k = await keysMod.generateDeviceKeys();
      const extractable = k.webCrypto ? [k.x25519Private.extractable, k.ed25519Private.extractable] : null;
      return { web_crypto: k.webCrypto, extractable, x25519_public: hex(k.x25519Public) };
    }
    default:
      throw new Error(`unknown op ${cmd.op}`);
  }
}

process.stdout.write(JSON.stringify(await main()));
