// The API with the key the user typed. The key lives in this tab's
// sessionStorage only (gone when the tab closes; never in local storage or a
// cookie) and travels as `Authorization: Bearer`, to this origin only.

const KEY = 'bulkhead.console.key';

export const session = {
  key: () => sessionStorage.getItem(KEY),
  set: (key) => sessionStorage.setItem(KEY, key),
  clear: () => sessionStorage.removeItem(KEY),
  /** `operator`, `tenant`, or null for something that is not a Bulkhead key. */
  kind(key) {
    if (/^bh_op_[0-9a-f]{12}_[A-Za-z0-9_-]{20,}$/.test(key)) return 'operator';
    if (/^bh_tk_[0-9a-f]{12}_[A-Za-z0-9_-]{20,}$/.test(key)) return 'tenant';
    return null;
  },
};

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** A path with its interpolated parts URL-encoded: path`/v1/runs/${id}`. */
export function path(strings, ...parts) {
  return strings.reduce((out, str, i) => out + str + (i < parts.length ? encodeURIComponent(parts[i]) : ''), '');
}

/** GET (or another method) on the API; the parsed JSON, or an ApiError. */
export async function api(url, {method = 'GET', query} = {}) {
  const key = session.key();
  if (!key) throw new ApiError(401, 'unauthorized', 'not signed in');
  const qs = query ? `?${new URLSearchParams(Object.entries(query).filter(([, v]) => v !== undefined && v !== null))}` : '';
  const res = await fetch(url + qs, {
    method,
    headers: {Authorization: `Bearer ${key}`, Accept: 'application/json'},
    cache: 'no-store',
    credentials: 'omit',
    redirect: 'error',
    referrerPolicy: 'no-referrer',
  });
  let body = null;
  try {
    body = await res.json();
  } catch {
    body = null;
  }
  if (!res.ok) {
    const err = body && body.error;
    throw new ApiError(res.status, err ? err.code : `http_${res.status}`, err ? err.message : res.statusText);
  }
  return body;
}

/** Every item of a paginated list (`limit`/`after`), up to maxPages pages. */
export async function listAll(url, {query = {}, maxPages = 10} = {}) {
  const items = [];
  let after;
  for (let page = 0; page < maxPages; page += 1) {
    const body = await api(url, {query: {...query, limit: 500, after}});
    items.push(...body.data);
    if (!body.has_more || body.next_after === null || body.next_after === undefined) {
      return {items, complete: true};
    }
    after = body.next_after;
  }
  return {items, complete: false};
}

/** Runs fn over items with at most `width` calls in flight, keeping order. */
export async function mapLimit(items, width, fn) {
  const out = new Array(items.length);
  let next = 0;
  async function worker() {
    while (next < items.length) {
      const i = next;
      next += 1;
      out[i] = await fn(items[i], i);
    }
  }
  await Promise.all(Array.from({length: Math.min(width, items.length)}, worker));
  return out;
}

/** The API's routes, from its OpenAPI document (public), to show only what this server has. */
let routes;
export async function hasRoute(route, method = 'get') {
  if (!routes) {
    routes = fetch('/openapi.json', {cache: 'no-store', credentials: 'omit'})
      .then((r) => (r.ok ? r.json() : {paths: {}}))
      .then((doc) => doc.paths || {})
      .catch(() => ({}));
  }
  const paths = await routes;
  return Boolean(paths[route] && paths[route][method]);
}
