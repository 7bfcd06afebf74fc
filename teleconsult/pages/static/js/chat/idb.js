// One IndexedDB object store per database, opened for each transaction and closed after
// it: the device keys (keys.js) and the outbox (store.js).

/** A `run(mode, fn)` over the object store `store` of database `name` (version 1, made by
 * `create(db)`): `fn` gets the store and returns a request, whose result `run` resolves to
 * once the transaction has completed. */
export function objectStore(name, store, create) {
  function openDb() {
    return new Promise((resolve, reject) => {
      const req = indexedDB.open(name, 1);
      req.onupgradeneeded = () => create(req.result);
      req.onsuccess = () => resolve(req.result);
      req.onerror = () => reject(req.error);
    });
  }
  return (mode, fn) => openDb().then((db) => new Promise((resolve, reject) => {
    const tx = db.transaction(store, mode);
    const req = fn(tx.objectStore(store));
    tx.oncomplete = () => { db.close(); resolve(req.result); };
    tx.onerror = () => { db.close(); reject(tx.error); };
  }));
}
