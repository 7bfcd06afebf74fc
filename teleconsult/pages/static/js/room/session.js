// Tokens for the real-time connections: the page's in-memory access token, refreshed
// through static/js/api.js when a handshake was refused for an expired one.
import { api, restoreSession, session } from '../api.js';

let stale = false;

export function markStale(err) {
  const code = err?.data?.code;
  if (code === 'token_expired' || code === 'token_invalid') stale = true;
}

export async function accessToken() {
  if (stale) {
    stale = false;
    try { await api('/api/v1/me', { retries: 1 }); } catch { /* the handshake says why */ }
  }
  return session()?.accessToken ?? (await restoreSession())?.accessToken;
}
