// Following the unfinished jobs of the open conversation with long-polls
// (GET /api/jobs/{id}?wait=&after=): the server answers as soon as the job changes past the
// sequence we have, so text appears as it streams and nothing is asked while nothing happens.
//
// One request at a time, so typing ahead never uses up the browser's connections: for the job
// that is running, else the lowest unfinished turn (jobs of a conversation run in turn order,
// so that is the one to start next).

import { ApiError, isAbort, isFinalStatus, request, retrying, sleep } from "./api.js";

const WAIT_S = 25;
const REQUEST_TIMEOUT_MS = (WAIT_S + 10) * 1000;
// A server that answers a long-poll at once without any change (one that does not know `wait`)
// must not turn this loop into a busy loop.
const MIN_IDLE_GAP_MS = 1000;
export const isFinal = isFinalStatus;  // from GET /api/states

export class Follower {
  #jobs = new Map();  // job id -> {turn, status, sequence (null: not seen in full yet)}
  #current = null;    // AbortController of the request in flight
  #running = false;
  #stopped = false;

  /** onJob(job): a newer state of a job; onGone(id): the job no longer exists. */
  constructor({ onJob, onGone }) {
    this.onJob = onJob;
    this.onGone = onGone;
  }

  track(id, { turn = null, status = "queued", sequence = null } = {}) {
    if (this.#stopped || this.#jobs.has(id)) return;
    this.#jobs.set(id, { turn, status, sequence });
    this.#kick();
  }

  forget(id) {
    if (this.#jobs.delete(id)) this.#kick();
  }

  /** Ask again now (e.g. the tab became visible): abandons the wait in flight. */
  refresh() {
    this.#kick();
  }

  stop() {
    this.#stopped = true;
    this.#jobs.clear();
    this.#current?.abort();
  }

  #kick() {
    if (this.#running) this.#current?.abort();
    else this.#loop();
  }

  #head() {
    // A retried earlier turn waits while a later one runs: the running one streams meanwhile.
    const rank = ([, known]) => [known.status === "in_progress" ? 0 : 1, known.turn ?? Infinity];
    const before = (a, b) => rank(a)[0] - rank(b)[0] || rank(a)[1] - rank(b)[1];
    return [...this.#jobs].sort(before)[0];
  }

  async #loop() {
    this.#running = true;
    try {
      while (!this.#stopped && this.#jobs.size > 0) {
        const [id, known] = this.#head();
        this.#current = new AbortController();
        try {
          await this.#follow(id, known, this.#current.signal);
        } catch (err) {
          if (isAbort(err)) continue;  // kicked: choose the head again
          if (!(err instanceof ApiError)) console.error("following job", id, err);
          // 404: the job or its conversation was deleted; 422: not a job id. Nothing to follow.
          if (this.#jobs.delete(id)) this.onGone(id, err);
        }
      }
    } finally {
      this.#running = false;
      this.#current = null;
    }
  }

  async #follow(id, known, signal) {
    const query = known.sequence === null ? "" : `?wait=${WAIT_S}&after=${known.sequence}`;
    const started = performance.now();
    const { data: job } = await retrying(
      () => request("GET", `/api/jobs/${encodeURIComponent(id)}${query}`,
                    { signal, timeoutMs: REQUEST_TIMEOUT_MS }),
      { signal });
    if (!this.#jobs.has(id)) return;
    const changed = job.sequence !== known.sequence;
    Object.assign(known, { sequence: job.sequence, status: job.status, turn: job.turn ?? known.turn });
    if (isFinal(job.status)) this.#jobs.delete(id);
    this.onJob(job);
    if (!changed && !isFinal(job.status) && performance.now() - started < MIN_IDLE_GAP_MS) {
      await sleep(MIN_IDLE_GAP_MS, signal);
    }
  }
}
