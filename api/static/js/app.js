// The chat page: opens a conversation (its id is in the URL), shows every turn as the server
// has it, follows running replies live, and sends, stops and retries. Everything the page shows
// comes from the API; a reload at any moment rebuilds the same picture from it.
//
// This module is the page around the conversation: the conversation list, opening, resetting
// and deleting a conversation, and the wiring. The conversation on screen is conversation.js;
// sending and the buttons of a turn are actions.js; branch, export and import transfer.js.

import { showAccount } from "./account.js";
import { ApiError, connection, loadStates, request, retrying, unreachable } from "./api.js";
import { emptyBoxKey, resendPending, retryTurn, send, stopTurn, turnAction } from "./actions.js";
import { Composer } from "./composer.js";
import { hooks, loadHistory, loadOlder, page, resetPage, showTitle } from "./conversation.js";
import { $, announce, clearNotice, showNotice } from "./shell.js";
import { Sidebar, conversationUrl, newConversationId, validConversationId } from "./sidebar.js";
import { branchFrom, wireTransfer } from "./transfer.js";
import { isRunning } from "./turns.js";

const LIST_PAGE = 50;
let nextListPage = null;

connection.addEventListener("change", () => {
  const problem = connection.problem();
  $("connection").hidden = !problem;
  $("connection").textContent = problem ?? "";
});

// -- opening a conversation ---------------------------------------------------------------------

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
    nextListPage = data.next_before;
    sidebar.render(conversations, page.conversation);
    $("more-conversations").hidden = !data.next_before;
    showTitle();
  } catch (err) {
    sidebar.showError(`会話一覧を読み込めませんでした：${err.message}`);
  }
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

Object.assign(hooks, {
  turnHandlers: {
    onStop: stopTurn, onRetry: retryTurn,
    onAction: (turn, name, arg) => (name === "branch" ? branchFrom(turn) : turnAction(turn, name, arg)),
  },
  titleOf: (id) => sidebar.titleOf(id),
  listChanged: refreshList,
  loaded: resendPending,
  unreadable: () => composer.setDisabled(true),
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
  wireTransfer({
    open: async (id) => {
      await openConversation(id, { push: true });
      composer.focus();  // the button pressed went away with the old conversation
    },
    refreshList,
  });
  $("more-conversations").addEventListener("click", () => fetchList(nextListPage));
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
  showAccount({ onError: (err) => showNotice(`サインアウトできませんでした：${err.message}`) });
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
