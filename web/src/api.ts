// The session (tokens from medshard's OAuth2 password flow) and authenticated requests.
//
// Tokens live in sessionStorage: they survive a reload but not the closing of the tab, and no
// other tab or site sees them. The access token is refreshed shortly before it expires; any
// 401 the refresh cannot cure ends the session and sends the user back to the login page.

export type Role = 'admin' | 'doctor' | 'expert' | 'patient' | 'service';

export interface Me {
  username: string;
  role: Role;
  sites: string[];
  patient_id: string | null;
  via: string;
}

interface TokenPair {
  access_token: string;
  refresh_token: string;
  expires_in: number;
}

interface Session {
  access: string;
  refresh: string;
  /** epoch ms when the access token expires */
  expiresAt: number;
  /** seconds the access token lives, as the server said */
  lifetime: number;
  me: Me;
}

const KEY = 'medshard.session';

export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

let session: Session | null = load();
let refreshTimer: number | undefined;
let refreshing: Promise<boolean> | null = null;
const endListeners: ((reason: string) => void)[] = [];

function load(): Session | null {
  try {
    const raw = sessionStorage.getItem(KEY);
    return raw ? (JSON.parse(raw) as Session) : null;
  } catch {
    return null;
  }
}

function save(s: Session): void {
  session = s;
  sessionStorage.setItem(KEY, JSON.stringify(s));
  schedule();
}

/** Called with a reason whenever the session ends (logout, expiry, revoked token). */
export function onSessionEnd(fn: (reason: string) => void): void {
  endListeners.push(fn);
}

export function me(): Me | null {
  return session?.me ?? null;
}

/** The current access token (for Cornerstone's loader, which makes its own requests). */
export function accessToken(): string | null {
  return session?.access ?? null;
}

export function endSession(reason: string): void {
  const had = session !== null;
  session = null;
  sessionStorage.removeItem(KEY);
  if (refreshTimer !== undefined) window.clearTimeout(refreshTimer);
  refreshTimer = undefined;
  if (had) for (const fn of endListeners) fn(reason);
}

/** Resume a session saved in this tab: refresh now if the access token is (nearly) gone. */
export async function resume(): Promise<Me | null> {
  if (!session) return null;
  if (session.expiresAt - Date.now() < 5000 && !(await refresh())) return null;
  schedule();
  return session?.me ?? null;
}

function schedule(): void {
  if (refreshTimer !== undefined) window.clearTimeout(refreshTimer);
  if (!session) return;
  // refresh when 80% of the lifetime is used, at most a minute before expiry
  const lead = Math.min(60_000, session.lifetime * 200);
  const wait = Math.max(1000, session.expiresAt - lead - Date.now());
  refreshTimer = window.setTimeout(() => void refresh(), wait);
}

async function errorText(r: Response): Promise<string> {
  try {
    const body = (await r.json()) as Record<string, unknown>;
    const detail = body.error_description ?? body.error ?? body.detail;
    if (typeof detail === 'string') return detail;
    if (Array.isArray(detail)) {
      return detail.map((d) => (d as { msg?: string }).msg ?? JSON.stringify(d)).join('; ');
    }
  } catch {
    /* not JSON */
  }
  return `${r.status} ${r.statusText}`;
}

async function tokenRequest(path: string, form: Record<string, string>): Promise<TokenPair> {
  const r = await fetch(path, {
    method: 'POST',
    headers: { 'Content-Type': 'application/x-www-form-urlencoded', Accept: 'application/json' },
    body: new URLSearchParams(form),
  });
  if (!r.ok) throw new ApiError(r.status, await errorText(r));
  return (await r.json()) as TokenPair;
}

function fromPair(pair: TokenPair, who: Me): Session {
  return {
    access: pair.access_token,
    refresh: pair.refresh_token,
    expiresAt: Date.now() + pair.expires_in * 1000,
    lifetime: pair.expires_in,
    me: who,
  };
}

/** Log in with a password; resolves to who the server says we are. */
export async function login(username: string, password: string): Promise<Me> {
  const pair = await tokenRequest('/api/auth/token', { grant_type: 'password', username, password });
  const r = await fetch('/api/auth/me', {
    headers: { Authorization: `Bearer ${pair.access_token}`, Accept: 'application/json' },
  });
  if (!r.ok) throw new ApiError(r.status, await errorText(r));
  const who = (await r.json()) as Me;
  save(fromPair(pair, who));
  return who;
}

/** Exchange the refresh token for a new pair (one at a time); false ends the session. */
export function refresh(): Promise<boolean> {
  if (refreshing) return refreshing;
  const current = session;
  if (!current) return Promise.resolve(false);
  refreshing = tokenRequest('/api/auth/refresh', { refresh_token: current.refresh })
    .then((pair) => {
      if (session === current) save(fromPair(pair, current.me));
      return true;
    })
    .catch((err: unknown) => {
      if (err instanceof ApiError && err.status === 401) {
        endSession('Your session has expired. Please log in again.');
        return false;
      }
      schedule(); // a network hiccup: try again later, the access token may still work
      return session !== null;
    })
    .finally(() => {
      refreshing = null;
    });
  return refreshing;
}

/** Log out on the server (both tokens stop working at once), then locally. */
export async function logout(): Promise<void> {
  const token = accessToken();
  if (token) {
    try {
      await fetch('/api/auth/logout', { method: 'POST', headers: { Authorization: `Bearer ${token}` } });
    } catch {
      /* offline: the local session ends anyway */
    }
  }
  endSession('You have logged out.');
}

/**
 * An authenticated request. A 401 gets one refresh and one retry; if that does not cure it
 * the session ends. Other statuses are returned as they are.
 */
export async function api(path: string, init: RequestInit = {}): Promise<Response> {
  if (!session) throw new ApiError(401, 'not logged in');
  if (session.expiresAt - Date.now() < 5000) await refresh();
  const send = () => {
    const headers = new Headers(init.headers);
    const token = accessToken();
    if (token) headers.set('Authorization', `Bearer ${token}`);
    return fetch(path, { ...init, headers });
  };
  let r = await send();
  if (r.status === 401 && session) {
    if (await refresh()) r = await send();
    if (r.status === 401) endSession('Your session has expired. Please log in again.');
  }
  return r;
}

/** GET (or send) JSON; a non-2xx status throws an ApiError with the server's reason. */
export async function json<T>(path: string, init: RequestInit = {}): Promise<T> {
  const headers = new Headers(init.headers);
  if (!headers.has('Accept')) headers.set('Accept', 'application/json');
  if (init.body && typeof init.body === 'string' && !headers.has('Content-Type')) {
    headers.set('Content-Type', 'application/json');
  }
  const r = await api(path, { ...init, headers });
  if (!r.ok) throw new ApiError(r.status, await errorText(r));
  return (await r.json()) as T;
}

export { errorText };
