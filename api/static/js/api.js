// Talking to the MySisterDB API: one request function with a timeout and typed errors, and a
// retry loop with backoff that tells the page while it is reconnecting.

const DEFAULT_TIMEOUT_MS = 15000;
const BACKOFF_FIRST_MS = 500;
const BACKOFF_MAX_MS = 15000;

/** An answer that is not a success. status 0: the server could not be reached (or timed out). */
export class ApiError extends Error {
  constructor(status, code, message, retryAfterS = null) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfterS = retryAfterS;
  }
}

/** Worth asking again: the network, a busy or failing server; never a refusal of the input. */
export const transient = (err) =>
  err instanceof ApiError && (err.status === 0 || err.status === 429 || err.status >= 500);

/** The same, minus 429: a busy server answers a new message with "try later", not a retry. */
export const unreachable = (err) => transient(err) && err.status !== 429;

export const isAbort = (err) => err?.name === "AbortError";

// The server's clock (from the Date header), so elapsed times do not depend on a device whose
// clock is wrong. The header has whole seconds: differences under 2 s are its rounding.
let clockOffsetMs = 0;
export const serverNow = () => Date.now() + clockOffsetMs;

function noteServerTime(response) {
  const date = Date.parse(response.headers.get("date") ?? "");
  if (Number.isNaN(date)) return;
  const offset = date + 500 - Date.now();
  clockOffsetMs = Math.abs(offset) > 2000 ? offset : 0;
}

function errorFrom(response, data) {
  const retryAfter = Number.parseInt(response.headers.get("retry-after") ?? "", 10);
  const error = data?.error ?? {};
  return new ApiError(response.status, error.code ?? `http_${response.status}`,
                      error.message ?? `サーバーがエラーを返しました（${response.status}）。`,
                      Number.isNaN(retryAfter) ? null : retryAfter);
}

/** The body as JSON; null when empty (204), undefined when it is not JSON (a proxy's page). */
function parseJson(text) {
  if (!text) return null;
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

/**
 * One HTTP request. Resolves with {status, data, headers}; rejects with an ApiError, or with
 * an AbortError when the caller's signal aborts it.
 */
export async function request(method, path, { body, headers = {}, signal,
                                              timeoutMs = DEFAULT_TIMEOUT_MS } = {}) {
  if (signal?.aborted) throw new DOMException("aborted by the page", "AbortError");
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), timeoutMs);
  const forward = () => controller.abort();
  signal?.addEventListener("abort", forward, { once: true });
  try {
    // A file (an import) goes as it is; anything else as JSON.
    const file = body instanceof Blob;
    const type = file ? body.type || "application/octet-stream" : "application/json";
    const response = await fetch(path, {
      method, signal: controller.signal, cache: "no-store",
      headers: body === undefined ? headers : { "content-type": type, ...headers },
      body: body === undefined || file ? body : JSON.stringify(body),
    });
    noteServerTime(response);
    const data = parseJson(await response.text());
    if (response.status === 401) signInAgain();
    if (!response.ok) throw errorFrom(response, data);
    if (data === undefined) throw new Error("not JSON");
    return { status: response.status, data, headers: response.headers };
  } catch (err) {
    if (signal?.aborted) throw new DOMException("aborted by the page", "AbortError");
    if (err instanceof ApiError) throw err;
    // fetch's TypeError, our timeout, a body cut short: the server could not be reached.
    throw new ApiError(0, "network", "サーバーに接続できません。");
  } finally {
    clearTimeout(timer);
    signal?.removeEventListener("abort", forward);
  }
}

/**
 * The session ended while the page was open (it expired, or the person signed out in another
 * tab): to the sign-in form, which brings the person back to this very conversation.
 */
function signInAgain() {
  const here = location.pathname + location.search;
  location.assign(`/signin?next=${encodeURIComponent(here)}`);
}

// -- reconnecting ---------------------------------------------------------------------------

/** Fires "change" whenever the set of requests being retried changes; `problem` says why. */
export const connection = new EventTarget();
const failing = new Map();  // one entry per retry loop that is currently failing
const wakers = new Set();   // sleeping backoffs, woken early when the browser comes back online

connection.problem = () => [...failing.values()].at(-1) ?? null;

function setFailing(token, message) {
  failing.set(token, message);
  connection.dispatchEvent(new Event("change"));
}

function clearFailing(token) {
  if (failing.delete(token)) connection.dispatchEvent(new Event("change"));
}

export function describe(err, delayMs) {
  const wait = `${Math.max(1, Math.round(delayMs / 1000))} 秒後に再接続します…`;
  if (err.status === 0) return `サーバーに接続できません。${wait}`;
  if (err.status === 429) return `サーバーが混み合っています。${wait}`;
  if (err.status === 503) return `サーバーが一時的に利用できません。${wait}`;
  if (err.status === 504) return `サーバーの応答が遅れています。${wait}`;
  return `サーバーでエラーが発生しました（${err.status}）。${wait}`;
}

export function backoffMs(attempt, retryAfterS = null) {
  const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** attempt);
  const jittered = ceiling / 2 + Math.random() * ceiling / 2;  // spread clients out
  return Math.max(jittered, (retryAfterS ?? 0) * 1000);
}

export function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    const done = () => { clearTimeout(timer); wakers.delete(done); resolve(); };
    const timer = setTimeout(done, ms);
    wakers.add(done);
    signal?.addEventListener("abort", () => {
      clearTimeout(timer);
      wakers.delete(done);
      reject(new DOMException("aborted by the page", "AbortError"));
    }, { once: true });
  });
}

window.addEventListener("online", () => { for (const wake of [...wakers]) wake(); });

/**
 * Run `attempt` until it succeeds, waiting longer after each failure that `retryIf` accepts
 * (network, 5xx, 429 by default). Other errors, and aborts, pass through at once.
 */
export async function retrying(attempt, { signal, retryIf = transient } = {}) {
  const token = Symbol("retry");
  try {
    for (let n = 0; ; n += 1) {
      try {
        return await attempt();
      } catch (err) {
        if (isAbort(err) || !retryIf(err)) throw err;
        const delay = backoffMs(n, err.retryAfterS);
        setFailing(token, describe(err, delay));
        await sleep(delay, signal);
      }
    }
  } finally {
    clearFailing(token);
  }
}

// -- the server's table of states -------------------------------------------------------------

/**
 * GET /api/states, read once at start: which job statuses are final or retryable and what a
 * turn in each state offers come from the server, so the page keeps no copy of its own.
 */
export const states = { job: {}, turn: {}, newestOnly: [] };

export async function loadStates() {
  const { data } = await retrying(() => request("GET", "/api/states"));
  states.job = data.job_states;
  states.turn = data.turn_states;
  states.newestOnly = data.newest_only;
}

export const isFinalStatus = (status) => states.job[status]?.final === true;
export const isRetryableStatus = (status) => states.job[status]?.retryable === true;
