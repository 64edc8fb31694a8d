// kwp's JSON API, called with the token the user signed in with.  The token
// lives in this tab's sessionStorage and travels only in the Authorization
// header: never in a URL, never in localStorage.

const TOKEN_KEY = "kwp.token";

export const session = {
  token: () => sessionStorage.getItem(TOKEN_KEY),
  start: (token) => sessionStorage.setItem(TOKEN_KEY, token),
  end: () => sessionStorage.removeItem(TOKEN_KEY),
};

/** Fired (as "unauthorized") when kwp refuses the session's token. */
export const events = new EventTarget();

export class ApiError extends Error {
  constructor(status, code, detail, method, path) {
    super(detail);
    this.status = status;
    this.code = code;
    this.detail = detail;
    this.method = method;
    this.path = path;
  }

  /** What went wrong, in words, for the page. */
  get words() {
    if (this.status === 0) return `kwp did not answer ${this.method} ${this.path}: ${this.detail}. Is it running and reachable?`;
    const what = `${this.method} ${this.path} answered ${this.status} ${this.code}`;
    if (this.status === 401) return `The token was refused: ${this.detail} (${what}).`;
    if (this.status === 403) return `This token may not do that: ${this.detail} (${what}).`;
    return `${this.detail} (${what}).`;
  }
}

/** The path of a channel's API, with each part encoded. */
export function channelPath(channel, ...rest) {
  return ["/api/webhook", channel, ...rest].map((part, i) => (i ? encodeURIComponent(part) : part)).join("/");
}

export function withQuery(path, query) {
  const params = new URLSearchParams();
  for (const [key, value] of Object.entries(query || {})) {
    if (value !== undefined && value !== null && value !== "") params.set(key, value);
  }
  const text = params.toString();
  return text ? `${path}?${text}` : path;
}

async function errorOf(response, method, path) {
  let code = `http_${response.status}`;
  let detail = response.statusText || "no message";
  try {
    const body = await response.json();
    code = body.error || code;
    detail = body.message || detail;
  } catch {
    // Not the JSON error of the API (a proxy's page, say): keep the status.
  }
  return new ApiError(response.status, code, detail, method, path);
}

/**
 * One call of the API: resolves with the parsed JSON (null for an empty
 * answer), rejects with an ApiError.  `body` is sent as is, `json` encoded;
 * `token` replaces the session's (the sign-in check); `receive` marks a call
 * that answers what the receive path answered, whose 401 is about the
 * webhook's secret, not about the token.
 */
export async function call(method, path, { query, json, body, token, signal, headers, receive = false } = {}) {
  const url = withQuery(path, query);
  const sent = { Accept: "application/json", Authorization: `Bearer ${token ?? session.token() ?? ""}`, ...headers };
  if (json !== undefined) body = JSON.stringify(json);
  if (body !== undefined) sent["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(url, { method, headers: sent, body, signal, cache: "no-store", credentials: "omit" });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, "network", error.message, method, path);
  }
  if (!response.ok) {
    const error = await errorOf(response, method, path);
    if (response.status === 401 && token === undefined && !receive) events.dispatchEvent(new CustomEvent("unauthorized", { detail: error }));
    throw error;
  }
  const text = await response.text();
  return text ? JSON.parse(text) : null;
}

/** Open a response stream (for Server-Sent Events); rejects like call(). */
export async function open(path, { query, headers, signal } = {}) {
  const url = withQuery(path, query);
  const sent = { Authorization: `Bearer ${session.token() ?? ""}`, ...headers };
  let response;
  try {
    response = await fetch(url, { headers: sent, signal, cache: "no-store", credentials: "omit" });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, "network", error.message, "GET", path);
  }
  if (!response.ok) {
    const error = await errorOf(response, "GET", path);
    if (response.status === 401) events.dispatchEvent(new CustomEvent("unauthorized", { detail: error }));
    throw error;
  }
  return response;
}

/**
 * The query that names a consumer on the per-queue routes: ?consumer=NAME on
 * a channel whose consumers config.yml names, and for the queue a reload
 * removed, or one the token does not see; none for the implicit consumer of
 * a channel without `consumers` ("default").
 */
export function consumerQuery(channel, consumer) {
  if (!consumer) return {};
  return !channel || channel.named_consumers || consumer !== "default" ? { consumer } : {};
}
