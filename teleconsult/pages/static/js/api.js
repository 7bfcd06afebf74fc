// The REST client of the pages: one bearer token in memory, the refresh token in an
// HttpOnly cookie (docs/pages.md), timeouts, retries with backoff, silent refresh.
//
//   import { api, ApiError, session, restoreSession, signIn, signOut } from "./api.js";
//   const me = await api("/api/v1/me");
//
// The access token never touches localStorage or sessionStorage: a reload asks the
// server for a new one with the cookie (restoreSession). Several tabs refresh one at a
// time (Web Locks), since a refresh token works once and a second use would end the
// session everywhere.

const AUTH = "/api/v1/auth";
const BROWSER = { "X-Session-Transport": "cookie" };
const IDEMPOTENT = new Set(["GET", "HEAD", "PUT", "DELETE", "OPTIONS"]);
const RETRY_STATUSES = new Set([502, 503, 504]);

let current = null; // { user, accessToken, expiresAt }
let refreshing = null; // the refresh in flight, shared by concurrent callers
const listeners = new Set();

export class ApiError extends Error {
  constructor(status, code, detail, body = null) {
    super(detail || code || `HTTP ${status}`);
    this.name = "ApiError";
    this.status = status; // 0: no answer (offline, timeout)
    this.code = code; // the problem's machine code, or "network" / "timeout"
    this.detail = detail;
    this.body = body;
  }
}

/** The signed-in user and their access token, or null. */
export function session() {
  return current ? { user: current.user, accessToken: current.accessToken } : null;
}

/** Call fn(session or null) whenever someone signs in, out, or is refreshed. */
export function onSessionChange(fn) {
  listeners.add(fn);
  return () => listeners.delete(fn);
}

function setSession(answer) {
  current = answer
    ? {
        user: answer.user,
        accessToken: answer.access_token,
        expiresAt: Date.now() + answer.expires_in * 1000,
      }
    : null;
  for (const fn of listeners) {
    try {
      fn(session());
    } catch (err) {
      console.error(err);
    }
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function backoff(attempt) {
  // 0.5 s, 1 s, 2 s … capped at 8 s, with full jitter so many phones do not retry in step.
  const cap = Math.min(8000, 500 * 2 ** attempt);
  return cap / 2 + Math.random() * (cap / 2);
}

async function once(path, { method, body, timeoutMs, headers }) {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), timeoutMs);
  const init = { method, headers: { Accept: "application/json", ...headers }, signal: controller.signal, credentials: "same-origin" };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(path, init);
  } catch (err) {
    const timedOut = controller.signal.aborted;
    throw new ApiError(0, timedOut ? "timeout" : "network", timedOut ? "the server did not answer in time" : "no connection");
  } finally {
    clearTimeout(timer);
  }
  if (resp.status === 204) return null;
  let data = null;
  const type = resp.headers.get("Content-Type") || "";
  if (type.includes("json")) {
    try {
      data = await resp.json();
    } catch {
      data = null;
    }
  } else {
    data = await resp.text();
  }
  if (!resp.ok) {
    const problem = data && typeof data === "object" ? data : {};
    const err = new ApiError(resp.status, problem.code || `http_${resp.status}`, problem.detail || resp.statusText, problem);
    err.retryAfter = Number(resp.headers.get("Retry-After")) || 0;
    throw err;
  }
  return data;
}

async function withRetries(path, opts, retries, retryable) {
  for (let attempt = 0; ; attempt++) {
    try {
      return await once(path, opts);
    } catch (err) {
      const transient = err.status === 0 || RETRY_STATUSES.has(err.status);
      if (!retryable || !transient || attempt >= retries) throw err;
      await sleep(Math.max(backoff(attempt), (err.retryAfter || 0) * 1000));
    }
  }
}

async function withLock(fn) {
  if (navigator.locks && navigator.locks.request) return navigator.locks.request("tc-session-refresh", fn);
  return fn();
}

/** Exchange the refresh cookie for a new access token; null when there is no session. */
async function refreshSession() {
  if (!refreshing) {
    refreshing = withLock(async () => {
      try {
        // The refresh rotates the cookie and works once: retried only when no answer came
        // back, and then a spent cookie is a 401 that signs out (never a silent loop).
        const answer = await withRetries(`${AUTH}/session/refresh`, { method: "POST", timeoutMs: 15000, headers: BROWSER }, 2, true);
        setSession(answer);
        return session();
      } catch (err) {
        if (err.status === 401 || err.status === 403) {
          setSession(null);
          return null;
        }
        throw err;
      }
    }).finally(() => {
      refreshing = null;
    });
  }
  return refreshing;
}

/** After a page load: the session the refresh cookie still holds, or null. */
export async function restoreSession() {
  if (current) return session();
  return refreshSession();
}

/** Sign in with e-mail and password (cookie transport); returns the user. */
export async function signIn(email, password) {
  const answer = await once(`${AUTH}/login`, { method: "POST", body: { email, password }, timeoutMs: 20000, headers: BROWSER });
  setSession(answer);
  return answer.user;
}

/** End the session on the server and forget the token here. */
export async function signOut() {
  try {
    if (current) await api(`${AUTH}/logout`, { method: "POST", headers: BROWSER, retries: 1, idempotent: true });
  } catch (err) {
    if (err.status !== 401) console.warn("sign-out", err);
  } finally {
    setSession(null);
  }
}

/**
 * Call the API. Returns the parsed JSON answer (null for 204); throws ApiError.
 * Requests without side effects, PUT and DELETE are retried on no answer or a 502/503/504
 * with backoff; a POST or PATCH only with {idempotent: true} (when replaying it is safe,
 * e.g. a client-chosen id deduplicates it). An expired access token is refreshed once.
 */
export async function api(path, { method = "GET", body, timeoutMs = 15000, retries = 2, idempotent, headers = {} } = {}) {
  method = method.toUpperCase();
  const retryable = idempotent ?? IDEMPOTENT.has(method);
  if (current && current.expiresAt - Date.now() < 20000) await refreshSession();
  for (let auth = 0; ; auth++) {
    const sent = { ...headers };
    if (current) sent.Authorization = `Bearer ${current.accessToken}`;
    try {
      return await withRetries(path, { method, body, timeoutMs, headers: sent }, retries, retryable);
    } catch (err) {
      // 401 means the server did nothing: safe to refresh and send again, once.
      if (err.status === 401 && auth === 0 && current && !path.startsWith(`${AUTH}/session/`)) {
        if (await refreshSession()) continue;
      }
      throw err;
    }
  }
}
