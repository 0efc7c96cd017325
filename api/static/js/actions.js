// What the person does to the open conversation's turns: sending a message (kept until the
// server has it, so a reload sends it again), stopping and retrying a reply, and the newest
// turn's actions (another reply, choosing one, continuing, editing the message).

import { ApiError, isAbort, request, retrying, states, unreachable } from "./api.js";
import {
  follow, hooks, loadHistory, onJob, page, refreshTurn, renderTurns, showTurn, updateTurn, viewOf,
} from "./conversation.js";
import { announce, clearNotice, showNotice } from "./shell.js";
import { applyJob, isRunning } from "./turns.js";

let localTurns = 0;

// Messages on their way but not yet accepted (no 202): kept for the tab's life, so a reload
// while the server is unreachable sends them again, with the same Idempotency-Key.
const PENDING = "mysisterdb.pending";
const pending = {
  all() {
    try {
      return JSON.parse(sessionStorage.getItem(PENDING) ?? "[]");
    } catch {
      return [];
    }
  },
  save(entries) {
    try {
      sessionStorage.setItem(PENDING, JSON.stringify(entries));
    } catch {
      // storage refused (private mode, full): the message is only lost on a reload
    }
  },
  add(entry) { this.save([...this.all(), entry]); },
  remove(key) { this.save(this.all().filter((e) => e.key !== key)); },
};
const sending = new Set();  // Idempotency-Keys of the messages on their way now

/** Send again the open conversation's messages a reload interrupted. */
export function resendPending() {
  for (const entry of pending.all()) {
    if (entry.conversation === page.conversation && !sending.has(entry.key)) {
      send(entry.text, { key: entry.key });
    }
  }
}

function randomKey() {
  return [...crypto.getRandomValues(new Uint8Array(16))].map((b) => b.toString(16).padStart(2, "0")).join("");
}

function refusal(err) {
  if (err.status === 429) {
    const wait = err.retryAfterS ? `${err.retryAfterS} 秒ほど` : "少し";
    return `サーバーが混み合っています。${wait}待ってからもう一度送ってください。`;
  }
  return `送信できませんでした：${err.message}`;
}

/** A job the server has just started for the turn: shown in place and followed. */
function started(turn, job) {
  applyJob(turn, job);
  updateTurn(turn);
  follow(job);
  hooks.listChanged();
}

/** Send a message; true when the server has it (202), false when it was refused or taken back. */
export async function send(text, { key = null } = {}) {
  const generation = page.generation;
  const conversation = page.conversation;
  const turn = { key: `local-${++localTurns}`, local: true, turn: null, userText: text, state: "sending",
                 text: "", job: null, error: null, retryable: false, abort: new AbortController() };
  // The turn before is no longer the newest: it loses what only the newest offers (edit, ...).
  for (const older of page.turns) {
    older.actions = (older.actions ?? []).filter((name) => !states.newestOnly.includes(name));
    if (page.views.has(older.key)) viewOf(older).update(older);
  }
  page.turns.push(turn);
  clearNotice();
  renderTurns({ toBottom: true });
  // The same key on every attempt (and after a reload): a message whose answer was lost is not
  // stored twice.
  const idempotencyKey = key ?? randomKey();
  if (!key) pending.add({ conversation, text, key: idempotencyKey });
  sending.add(idempotencyKey);
  try {
    const { data: job } = await retrying(() => request("POST", "/api/chat", {
      body: { message: text, conversation_id: conversation },
      headers: { "Idempotency-Key": idempotencyKey }, signal: turn.abort.signal,
    }), { signal: turn.abort.signal, retryIf: unreachable });
    pending.remove(idempotencyKey);
    if (generation !== page.generation) return true;
    if (page.turns.some((t) => t !== turn && t.job?.id === job.id)) {
      // Stored before a reload: the history shows it already.
      page.turns = page.turns.filter((t) => t !== turn);
      renderTurns();
      return true;
    }
    started(turn, job);
    return true;
  } catch (err) {
    pending.remove(idempotencyKey);
    page.turns = page.turns.filter((t) => t !== turn);
    if (generation === page.generation) renderTurns();
    if (!isAbort(err)) showNotice(refusal(err));
    return false;
  } finally {
    sending.delete(idempotencyKey);
  }
}

/** Run a stop or a retry of a turn, one of each kind at a time. Each kind on its own: the
 * reply may show as stopped (and offer a retry) before the stop's own answer arrives. */
async function act(turn, kind, action) {
  turn.busy ??= {};
  if (turn.busy[kind]) return;
  turn.busy[kind] = true;
  viewOf(turn).setBusy(kind, true);
  try {
    await action();
  } finally {
    turn.busy[kind] = false;
    viewOf(turn).setBusy(kind, false);
  }
}

export function stopTurn(turn) {
  if (turn.state === "sending") {
    turn.abort.abort();
    return;
  }
  const jobId = turn.job.id;
  act(turn, "stop", async () => {
    try {
      const { data: job } = await retrying(
        () => request("POST", `/api/jobs/${jobId}/cancel`), { retryIf: unreachable });
      onJob(job);
    } catch (err) {
      if (err instanceof ApiError && err.status === 409) page.follower.refresh();  // it had just ended
      else showNotice(`停止できませんでした：${err.message}`);
    }
  });
}

export function retryTurn(turn) {
  const generation = page.generation;
  const jobId = turn.job.id;
  act(turn, "retry", async () => {
    try {
      const { data: job } = await retrying(
        () => request("POST", `/api/jobs/${jobId}/retry`), { retryIf: unreachable });
      if (generation !== page.generation) return;
      started(turn, job);
    } catch (err) {
      if (err instanceof ApiError && err.status === 409) loadHistory(generation);  // retried elsewhere
      else showNotice(refusal(err));
    }
  });
}

// -- regenerate, choose, continue, edit (the newest turn) ------------------------------------

const TURN_REQUESTS = {
  regenerate: () => ["POST", "regenerate"],
  continue: () => ["POST", "continue"],
  edit: (text) => ["PUT", "message", { message: text }],
  choose: (index) => ["PUT", "chosen", { index }],
};

/** One of the newest turn's actions; true when the server took it. A job it starts is
 * followed like a sent message's (and a reload resumes it from the history the same way). */
export function turnAction(turn, name, arg) {
  const generation = page.generation;
  const [method, path, body] = TURN_REQUESTS[name](arg);
  const url = `/api/conversations/${encodeURIComponent(page.conversation)}/turns/${turn.turn}/${path}`;
  let accepted = false;
  return act(turn, name === "edit" ? "edit" : "reply", async () => {
    try {
      const { data } = await retrying(() => request(method, url, { body }), { retryIf: unreachable });
      accepted = true;
      if (generation !== page.generation) return;
      if (name === "choose") {
        showTurn(turn, data);
        announce(`${turn.replies} 件中 ${turn.chosen + 1} 件目の返事：${turn.text}`);
        return;
      }
      if (name === "edit") turn.userText = arg;
      started(turn, data);
    } catch (err) {
      if (generation !== page.generation) return;
      showNotice(name === "choose" ? `返事を切り替えられませんでした：${err.message}` : refusal(err));
      refreshTurn(turn);  // 409: something else happened to the turn; show what
    }
  }).then(() => accepted);
}

/** Keys in an empty message box: ↑ edits the newest message, ← / → go through its replies. */
export function emptyBoxKey(key) {
  const newest = page.turns.at(-1);
  if (!newest || isRunning(newest.state)) return false;
  const view = viewOf(newest);
  if (key === "ArrowUp") return view.startEditing();
  if (key !== "ArrowLeft" && key !== "ArrowRight") return false;
  const button = key === "ArrowLeft" ? view.replyActions.prev : view.replyActions.next;
  if (button.hidden || button.disabled) return false;
  button.click();
  return true;
}
