// What the chat keeps on this browser besides the device keys: the outbox, messages a
// person typed that the server has not acknowledged yet. They are kept SEALED (the
// envelope, which this device can open again since it is a recipient of its own messages),
// so no plaintext rests on the disk, and a reload shows them again as "unsent" and retries.
const DB_NAME = 'teleconsult-outbox';
const STORE = 'outbox';

function openDb() {
  return new Promise((resolve, reject) => {
    const req = indexedDB.open(DB_NAME, 1);
    req.onupgradeneeded = () => {
      const s = req.result.createObjectStore(STORE, { keyPath: 'clientMsgId' });
      s.createIndex('byUser', 'userId');
    };
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

function run(mode, fn) {
  return openDb().then((db) => new Promise((resolve, reject) => {
    const tx = db.transaction(STORE, mode);
    const req = fn(tx.objectStore(STORE));
    tx.oncomplete = () => { db.close(); resolve(req.result); };
    tx.onerror = () => { db.close(); reject(tx.error); };
  }));
}

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
