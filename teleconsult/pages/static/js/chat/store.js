// What the chat keeps on this browser besides the device keys: the outbox, messages a
// person typed that the server has not acknowledged yet. They are kept SEALED (the
// envelope, which this device can open again since it is a recipient of its own messages),
// so no plaintext rests on the disk, and a reload shows them again as "unsent" and retries.
import { objectStore } from './idb.js';

const STORE = 'outbox';
const run = objectStore('teleconsult-outbox', STORE, (db) => {
  db.createObjectStore(STORE, { keyPath: 'clientMsgId' }).createIndex('byUser', 'userId');
});

/** `{clientMsgId, userId, threadId, envelope (JSON form), queuedAt}` */
export function putUnsent(entry) {
  return run('readwrite', (s) => s.put(entry));
}

export function dropUnsent(clientMsgId) {
  return run('readwrite', (s) => s.delete(clientMsgId));
}

/** This user's unsent messages, oldest first. */
export async function listUnsent(userId) {
  const all = await run('readonly', (s) => s.index('byUser').getAll(userId));
  return all.sort((a, b) => a.queuedAt - b.queuedAt);
}
