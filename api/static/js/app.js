// The chat page: opens a conversation (its id is in the URL), shows every turn as the server
// has it, follows running replies live, and sends, stops and retries. Everything the page shows
// comes from the API; a reload at any moment rebuilds the same picture from it.

import { ApiError, connection, isAbort, loadStates, request, states, retrying, unreachable } from "./api.js";
import { Composer } from "./composer.js";
import { Follower, isFinal } from "./follower.js";
import { Sidebar, conversationUrl, newConversationId, validConversationId } from "./sidebar.js";
import { TurnView, applyJob, isRunning, turnFromHistory } from "./turns.js";

const $ = (id) => document.getElementById(id);
const HISTORY_PAGE = 50;
const LIST_PAGE = 50;
const STICK_PX = 120;  // this close to the bottom, new text keeps the view at the bottom

const page = {
  conversation: null,  // the open conversation's id (null: the URL's id is unusable)
  turns: [],           // turn models, oldest first (see turns.js)
  views: new Map(),    // turn key -> TurnView
  follower: null,
  generation: 0,       // grows with each conversation opened: late answers for another are dropped
  hasMoreBefore: false,
  nextListPage: null,
};
let localTurns = 0;

// -- notices, announcements, connection --------------------------------------------------

function showNotice(text, { newChatLink = false } = {}) {
  $("notice-text").textContent = text;
  $("notice-link").hidden = !newChatLink;
  $("notice").hidden = false;
}

function clearNotice() {
  $("notice").hidden = true;
}

function announce(text) {
  const announcer = $("announcer");
  announcer.textContent = "";
  setTimeout(() => { announcer.textContent = text; }, 50);  // a change, even for the same words
}

connection.addEventListener("change", () => {
  const problem = connection.problem();
  $("connection").hidden = !problem;
  $("connection").textContent = problem ?? "";
});

// -- the turns on screen -------------------------------------------------------------------

function keepScroll(change, { toBottom = false } = {}) {
  const log = $("log");
  const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < STICK_PX;
  change();
  if (toBottom || atBottom) log.scrollTop = log.scrollHeight;
}

function viewOf(turn) {
  let view = page.views.get(turn.key);
  if (!view) {
    view = new TurnView(turn, { onStop: stopTurn, onRetry: retryTurn, onAction: turnAction });
    page.views.set(turn.key, view);
  }
  return view;
}

function renderTurns({ toBottom = false } = {}) {
  keepScroll(() => {
    $("turns").replaceChildren(...page.turns.map((t) => viewOf(t).root));
    $("empty").hidden = page.turns.length > 0 || page.conversation === null;
    $("older").hidden = !page.hasMoreBefore;
  }, { toBottom });
  showTitle();
}

function updateTurn(turn) {
  keepScroll(() => viewOf(turn).update(turn));
}

function showTitle() {
  const first = page.turns[0]?.userText;
  const title = page.conversation === null ? "会話を開けません"
    : sidebar.titleOf(page.conversation) ?? (first ? first.slice(0, 30) : "新しい会話");
  $("title").textContent = title;
  document.title = `${title} – しぃとおしゃべり`;
  $("reset").disabled = $("delete").disabled = page.conversation === null || page.turns.length === 0;
}

setInterval(() => {
  for (const turn of page.turns) if (isRunning(turn.state)) viewOf(turn).tick();
}, 1000);

// -- following jobs -------------------------------------------------------------------------

function onJob(job) {
  const turn = page.turns.find((t) => t.job?.id === job.id);
  if (!turn || (turn.job?.sequence ?? -1) > job.sequence) return;  // an older answer, late
  const wasRunning = isRunning(turn.state);
  applyJob(turn, job);
  updateTurn(turn);
  if (!isFinal(job.status)) return;
  page.follower.forget(job.id);
  if (wasRunning) {
    announceEnd(turn);
    refreshList();
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

function followRunning() {
  for (const turn of page.turns) {
    if (turn.job && isRunning(turn.state)) {
      page.follower.track(turn.job.id, { turn: turn.turn, status: turn.state });
    }
  }
}

// -- opening a conversation ---------------------------------------------------------------------

function resetPage(conversation) {
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

async function openConversation(id, { push = false, replace = false } = {}) {
  if (!validConversationId(id)) {
    openUnusable(id);
    return;
  }
  const generation = resetPage(id);
  const url = conversationUrl(id);
  if (push) history.pushState({ id }, "", url);
  else if (replace) history.replaceState({ id }, "", url);
  composer.setDisabled(false);
  sidebar.render(sidebar.conversations, id);
  await loadHistory(generation);
}

function openUnusable(id) {
  resetPage(null);
  composer.setDisabled(true);
  sidebar.render(sidebar.conversations, null);
  showNotice(`この URL の会話 ID「${id}」は使えません（使えるのは英数字・-・_ の 1〜64 文字です）。`,
             { newChatLink: true });
}

async function loadHistory(generation) {
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
    resendPending();
  } catch (err) {
    if (generation !== page.generation) return;
    composer.setDisabled(true);
    showNotice(`会話を開けませんでした：${err.message}`, { newChatLink: true });
  }
}

/** The turn as the history has it now (its actions, replies, chosen one), in place. */
async function refreshTurn(turn) {
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
function showTurn(turn, fresh) {
  Object.assign(turn, turnFromHistory(fresh), { key: turn.key });
  updateTurn(turn);
  if (turn.job && isRunning(turn.state)) {
    page.follower.track(turn.job.id, { turn: turn.turn, status: turn.state });
  }
}

async function loadOlder() {
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

// -- the conversation list ------------------------------------------------------------------

let listing = null;
let listAgain = false;

/** One list request at a time; asking while one is on its way asks once more after it. */
function refreshList() {
  if (listing) {
    listAgain = true;
    return listing;
  }
  listing = (async () => {
    do {
      listAgain = false;
      await fetchList();
    } while (listAgain);
  })().finally(() => { listing = null; });
  return listing;
}

async function fetchList(before = null) {
  const query = `?limit=${LIST_PAGE}${before ? `&before=${encodeURIComponent(before)}` : ""}`;
  try {
    const { data } = await retrying(() => request("GET", `/api/conversations${query}`));
    const conversations = before ? [...sidebar.conversations, ...data.conversations] : data.conversations;
    page.nextListPage = data.next_before;
    sidebar.render(conversations, page.conversation);
    $("more-conversations").hidden = !data.next_before;
    showTitle();
  } catch (err) {
    sidebar.showError(`会話一覧を読み込めませんでした：${err.message}`);
  }
}

// -- sending, stopping, retrying ------------------------------------------------------------------

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

function resendPending() {
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

/** Send a message; true when the server has it (202), false when it was refused or taken back. */
async function send(text, { key = null } = {}) {
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
    applyJob(turn, job);
    updateTurn(turn);
    page.follower.track(job.id, { turn: job.turn, status: job.status, sequence: job.sequence });
    refreshList();
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

function stopTurn(turn) {
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

function retryTurn(turn) {
  const generation = page.generation;
  const jobId = turn.job.id;
  act(turn, "retry", async () => {
    try {
      const { data: job } = await retrying(
        () => request("POST", `/api/jobs/${jobId}/retry`), { retryIf: unreachable });
      if (generation !== page.generation) return;
      applyJob(turn, job);
      updateTurn(turn);
      page.follower.track(job.id, { turn: job.turn, status: job.status, sequence: job.sequence });
      refreshList();
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
function turnAction(turn, name, arg) {
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
      applyJob(turn, data);
      updateTurn(turn);
      page.follower.track(data.id, { turn: data.turn, status: data.status, sequence: data.sequence });
      refreshList();
    } catch (err) {
      if (generation !== page.generation) return;
      showNotice(name === "edit" || name === "regenerate" || name === "continue" ? refusal(err)
        : `返事を切り替えられませんでした：${err.message}`);
      refreshTurn(turn);  // 409: something else happened to the turn; show what
    }
  }).then(() => accepted);
}

/** Keys in an empty message box: ↑ edits the newest message, ← / → go through its replies. */
function emptyBoxKey(key) {
  const newest = page.turns.at(-1);
  if (!newest || isRunning(newest.state)) return false;
  const view = viewOf(newest);
  if (key === "ArrowUp") return view.startEditing();
  const button = key === "ArrowLeft" ? view.replyActions.prev : view.replyActions.next;
  if (key !== "ArrowLeft" && key !== "ArrowRight") return false;
  if (button.hidden || button.disabled) return false;
  button.click();
  return true;
}

// -- reset and delete ------------------------------------------------------------------------

function confirmDialog({ title, text, ok }) {
  const dialog = $("confirm");
  $("confirm-title").textContent = title;
  $("confirm-text").textContent = text;
  $("confirm-ok").textContent = ok;
  dialog.returnValue = "";
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
  });
}

async function deleteConversation() {
  const id = page.conversation;
  const ok = await confirmDialog({
    title: "この会話を削除しますか？",
    text: "メッセージはすべて消え、元に戻せません。返事を作成中なら、それも止まります。",
    ok: "削除する",
  });
  if (!ok || id !== page.conversation) return;
  try {
    await retrying(() => request("DELETE", `/api/conversations/${encodeURIComponent(id)}`),
                   { retryIf: unreachable });
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 404)) {  // 404: nothing was stored yet
      showNotice(`削除できませんでした：${err.message}`);
      return;
    }
  }
  await refreshList();
  const next = sidebar.conversations.find((c) => c.id !== id)?.id ?? newConversationId();
  await openConversation(next, { push: true });
  announce("会話を削除しました。");
}

async function resetConversation() {
  const id = page.conversation;
  if (page.turns.some((t) => isRunning(t.state))) {
    showNotice("返事を作成中はリセットできません。停止するか、返事が届いてからもう一度試してください。");
    return;
  }
  const ok = await confirmDialog({
    title: "この会話をリセットしますか？",
    text: "この会話のメッセージと要約を消して、最初からやり直します。元に戻せません。",
    ok: "リセットする",
  });
  if (!ok || id !== page.conversation) return;
  try {
    await retrying(() => request("POST", `/api/conversations/${encodeURIComponent(id)}/reset`),
                   { retryIf: unreachable });
  } catch (err) {
    showNotice(`リセットできませんでした：${err.message}`);
    return;
  }
  await openConversation(id);
  refreshList();
  announce("会話をリセットしました。");
}

// -- wiring ----------------------------------------------------------------------------------

const sidebar = new Sidebar({
  aside: $("sidebar"), list: $("conversations"), status: $("conversations-status"),
  menu: $("menu"), scrim: $("scrim"),
  onOpen: (id) => { if (id !== page.conversation) openConversation(id, { push: true }); },
});

const composer = new Composer({
  form: $("composer"), textarea: $("message"), button: $("send"), counter: $("counter"),
  maxChars: Number(document.body.dataset.maxChars),  // the server's setting, given with the page
  onSend: (text) => send(text),
  onEmptyKey: emptyBoxKey,
  onTooLong: (length, max) => showNotice(
    `メッセージが長すぎます（${length.toLocaleString("ja-JP")} 文字、送れるのは ${max.toLocaleString("ja-JP")} 文字まで）。短くしてから送ってください。`),
});

function wire() {
  const simulator = document.body.dataset.llmMode === "simulator";
  $("mode-banner").hidden = !simulator;
  $("llm-note").hidden = simulator;
  $("new-chat").addEventListener("click", () => {
    sidebar.setDrawer(false);
    openConversation(newConversationId(), { push: true });
    composer.focus();
  });
  $("notice-link").addEventListener("click", (event) => {
    event.preventDefault();
    openConversation(newConversationId(), { push: true });
  });
  $("notice-close").addEventListener("click", clearNotice);
  document.querySelector(".skip-link").addEventListener("click", (event) => {
    event.preventDefault();
    composer.focus();
  });
  $("reset").addEventListener("click", resetConversation);
  $("delete").addEventListener("click", deleteConversation);
  $("older").addEventListener("click", loadOlder);
  $("more-conversations").addEventListener("click", () => fetchList(page.nextListPage));
  window.addEventListener("popstate", () => openConversation(urlConversation() ?? newConversationId()));
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState !== "visible") return;
    page.follower?.refresh();
    refreshList();
  });
}

function urlConversation() {
  return new URLSearchParams(location.search).get("conversation_id");
}

async function start() {
  wire();
  await loadStates();
  const fromUrl = urlConversation();
  const listed = refreshList();
  if (fromUrl !== null) {
    await openConversation(fromUrl);
    return;
  }
  await listed;  // no id in the URL: continue the newest conversation, or start one
  await openConversation(sidebar.conversations[0]?.id ?? newConversationId(), { replace: true });
}

// "ready" once the first conversation is on screen (browser tests wait for it).
start().finally(() => { document.documentElement.dataset.state = "ready"; });
