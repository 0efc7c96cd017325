// The open conversation on screen: its turns as the history has them, the running replies
// followed live, older turns loaded on demand, and a turn refreshed from the history when its
// job ends. Sending and the buttons of a turn are in actions.js; the page around it in app.js.

import { request, retrying } from "./api.js";
import { Follower, isFinal } from "./follower.js";
import { $, announce, clearNotice, showNotice } from "./shell.js";
import { TurnView, applyJob, isRunning, turnFromHistory } from "./turns.js";

const HISTORY_PAGE = 50;
const STICK_PX = 120;  // this close to the bottom, new text keeps the view at the bottom

export const page = {
  conversation: null,  // the open conversation's id (null: the URL's id is unusable)
  turns: [],           // turn models, oldest first (see turns.js)
  views: new Map(),    // turn key -> TurnView
  follower: null,
  generation: 0,       // grows with each conversation opened: late answers for another are dropped
  hasMoreBefore: false,
};

// What the rest of the page does for the conversation; app.js sets these once at start.
export const hooks = {
  turnHandlers: { onStop() {}, onRetry() {}, onAction() {} },  // the buttons of each TurnView
  titleOf: () => null,     // the conversation's title in the list, if it has one
  listChanged: () => {},   // a reply ended: the conversation list may have changed
  loaded: () => {},        // the history is on screen
  unreadable: () => {},    // the history could not be read
};

// -- the turns on screen -------------------------------------------------------------------

function keepScroll(change, { toBottom = false } = {}) {
  const log = $("log");
  const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < STICK_PX;
  change();
  if (toBottom || atBottom) log.scrollTop = log.scrollHeight;
}

export function viewOf(turn) {
  let view = page.views.get(turn.key);
  if (!view) {
    view = new TurnView(turn, hooks.turnHandlers);
    page.views.set(turn.key, view);
  }
  return view;
}

export function renderTurns({ toBottom = false } = {}) {
  keepScroll(() => {
    $("turns").replaceChildren(...page.turns.map((t) => viewOf(t).root));
    $("empty").hidden = page.turns.length > 0 || page.conversation === null;
    $("older").hidden = !page.hasMoreBefore;
  }, { toBottom });
  showTitle();
}

export function updateTurn(turn) {
  keepScroll(() => viewOf(turn).update(turn));
}

export function showTitle() {
  const first = page.turns[0]?.userText;
  const title = page.conversation === null ? "会話を開けません"
    : hooks.titleOf(page.conversation) ?? (first ? first.slice(0, 30) : "新しい会話");
  $("title").textContent = title;
  document.title = `${title} – しぃとおしゃべり`;
  $("reset").disabled = $("delete").disabled = page.conversation === null || page.turns.length === 0;
}

setInterval(() => {
  for (const turn of page.turns) if (isRunning(turn.state)) viewOf(turn).tick();
}, 1000);

// -- following jobs -------------------------------------------------------------------------

/** A newer state of a job of the conversation (from the follower, or a stop's answer). */
export function onJob(job) {
  const turn = page.turns.find((t) => t.job?.id === job.id);
  if (!turn || (turn.job?.sequence ?? -1) > job.sequence) return;  // an older answer, late
  const wasRunning = isRunning(turn.state);
  applyJob(turn, job);
  updateTurn(turn);
  if (!isFinal(job.status)) return;
  page.follower.forget(job.id);
  if (wasRunning) {
    announceEnd(turn);
    hooks.listChanged();
  }
  refreshTurn(turn);  // what the turn offers now, and the reply it keeps, come from the history
}

function onGone(jobId) {
  const turn = page.turns.find((t) => t.job?.id === jobId);
  if (!turn) return;
  Object.assign(turn, { state: "unknown", retryable: false });
  updateTurn(turn);
}

function announceEnd(turn) {
  if (turn.state === "completed") announce(`しぃ：${turn.text}`);
  else announce(viewOf(turn).problemText.textContent);
}

/** Follow a job the page has just been given (a sent message, a retry, a new reply). */
export function follow(job) {
  page.follower.track(job.id, { turn: job.turn, status: job.status, sequence: job.sequence ?? null });
}

function followRunning() {
  for (const turn of page.turns) {
    if (turn.job && isRunning(turn.state)) {
      page.follower.track(turn.job.id, { turn: turn.turn, status: turn.state });
    }
  }
}

// -- loading the history --------------------------------------------------------------------

/** Empty the view for another conversation (null: the URL's id is unusable). */
export function resetPage(conversation) {
  page.generation += 1;
  page.follower?.stop();
  const generation = page.generation;
  page.follower = new Follower({
    onJob: (job) => generation === page.generation && onJob(job),
    onGone: (id) => generation === page.generation && onGone(id),
  });
  Object.assign(page, { conversation, turns: [], hasMoreBefore: false });
  page.views.clear();
  clearNotice();
  renderTurns();
  return generation;
}

export async function loadHistory(generation) {
  const id = page.conversation;
  try {
    const { data } = await retrying(() => request(
      "GET", `/api/conversations/${encodeURIComponent(id)}/messages?limit=${HISTORY_PAGE}`));
    if (generation !== page.generation) return;
    const known = new Set(data.turns.map((t) => t.job?.id).filter(Boolean));
    // A message sent while the history was on its way stays, unless the history has it already.
    const unsent = page.turns.filter((t) => t.local && !known.has(t.job?.id));
    page.turns = [...data.turns.map(turnFromHistory), ...unsent];
    page.hasMoreBefore = data.has_more_before;
    renderTurns({ toBottom: true });
    followRunning();
    hooks.loaded();
  } catch (err) {
    if (generation !== page.generation) return;
    hooks.unreadable();
    showNotice(`会話を開けませんでした：${err.message}`, { newChatLink: true });
  }
}

/** The turn as the history has it now (its actions, replies, chosen one), in place. */
export async function refreshTurn(turn) {
  const generation = page.generation;
  const jobId = turn.job?.id;
  if (!turn.turn) return;
  try {
    const { data } = await retrying(() => request("GET",
      `/api/conversations/${encodeURIComponent(page.conversation)}/messages?limit=1&after=${2 * turn.turn - 2}`));
    const fresh = data.turns.find((t) => t.turn === turn.turn);
    // Something newer happened to the turn meanwhile (a retry, another reply, a later state of
    // the same job): its own answer shows it, this older picture must not replace it.
    if (generation !== page.generation || !fresh || turn.job?.id !== jobId || olderThanShown(turn, fresh)) return;
    showTurn(turn, fresh);
  } catch (err) {
    if (generation === page.generation) showNotice(err.message);
  }
}

/** The history's turn has the same job as the page, at an earlier point than the page has. */
function olderThanShown(turn, fresh) {
  return Boolean(fresh.job && turn.job && fresh.job.id === turn.job.id
                 && fresh.job.sequence < (turn.job.sequence ?? -1));
}

/** Fold a TurnOut into the turn on screen (keeping its key, so its view stays) and follow it. */
export function showTurn(turn, fresh) {
  Object.assign(turn, turnFromHistory(fresh), { key: turn.key });
  updateTurn(turn);
  if (turn.job && isRunning(turn.state)) {
    page.follower.track(turn.job.id, { turn: turn.turn, status: turn.state });
  }
}

export async function loadOlder() {
  const generation = page.generation;
  const before = page.turns.find((t) => t.userSeq !== undefined)?.userSeq;
  if (before === undefined) return;
  $("older").disabled = true;
  try {
    const { data } = await retrying(() => request("GET",
      `/api/conversations/${encodeURIComponent(page.conversation)}/messages?limit=${HISTORY_PAGE}&before=${before}`));
    if (generation !== page.generation) return;
    const log = $("log");
    const fromBottom = log.scrollHeight - log.scrollTop;
    page.turns = [...data.turns.map(turnFromHistory), ...page.turns];
    page.hasMoreBefore = data.has_more_before;
    renderTurns();
    log.scrollTop = log.scrollHeight - fromBottom;  // stay on the message being read
    followRunning();
  } catch (err) {
    showNotice(err.message);
  } finally {
    $("older").disabled = false;
  }
}
