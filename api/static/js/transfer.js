// Moving conversations: ここから分岐 under a finished reply (POST …/branch), and the
// conversation's menu (⋯ in the top bar): エクスポート (JSON) and Markdown で保存 (plain download
// links to GET …/export; the session cookie goes with them) and インポート (the chosen file as
// the body of POST /api/conversations/import). A conversation they make is opened at once, as
// a click in the list opens one.

import { request } from "./api.js";
import { page, viewOf } from "./conversation.js";
import { $, announce, showNotice } from "./shell.js";

// Longer than the server's own deadline for these (MYSISTERDB_IMPORT_TIMEOUT_S, 120 s by
// default): its answer, a 201 or a clear refusal, arrives before the page gives up.
const TRANSFER_TIMEOUT_MS = 180000;

// app.js gives these at start: opening a conversation and refreshing the list are its own.
const hooks = { open: async () => {}, refreshList: async () => {} };
let working = false;  // one branch or import at a time: each makes a conversation

/** Run a branch or an import with a visible "working" line; false when one is already on. */
async function transfer(what, action) {
  if (working) return false;
  working = true;
  const status = $("transfer-status");
  status.textContent = what;
  status.hidden = false;
  try {
    await action();
  } finally {
    working = false;
    status.hidden = true;
    status.textContent = "";
  }
  return true;
}

/** Open the conversation just made, with the list showing it. */
async function opened(id, said) {
  await hooks.refreshList();
  await hooks.open(id);
  announce(said);
}

/** ここから分岐: a new conversation holding this turn and the ones before it. */
export function branchFrom(turn) {
  const from = page.conversation;
  const view = viewOf(turn);
  return transfer("分岐しています…", async () => {
    view.setBusy("branch", true);
    try {
      const { data } = await request("POST", `/api/conversations/${encodeURIComponent(from)}/branch`,
                                     { body: { turn: turn.turn }, timeoutMs: TRANSFER_TIMEOUT_MS });
      await opened(data.conversation_id,
                   `${turn.turn} 番目までを新しい会話に分岐しました（${data.turns} 件のやりとり）。`);
    } catch (err) {
      showNotice(`分岐できませんでした：${err.message}`);
    } finally {
      view.setBusy("branch", false);
    }
  });
}

async function importFile(file) {
  await transfer(`「${file.name}」を読み込んでいます…`, async () => {
    $("import").setAttribute("aria-disabled", "true");
    try {
      const { data } = await request("POST", "/api/conversations/import",
                                     { body: file, timeoutMs: TRANSFER_TIMEOUT_MS });
      await opened(data.conversation_id,
                   `「${file.name}」から ${data.turns} 件のやりとりを読み込みました。`);
    } catch (err) {
      // 413 (too large), 422 (names the line or field), 409, 429: the server's own words.
      showNotice(`インポートできませんでした：${err.message}`);
    } finally {
      $("import").setAttribute("aria-disabled", "false");
    }
  });
}

// -- the conversation's menu -----------------------------------------------------------------

function exportUrl(format) {
  return `/api/conversations/${encodeURIComponent(page.conversation)}/export?format=${format}`;
}

function setMenu(open, { refocus = false } = {}) {
  const menu = $("conversation-menu");
  // Export needs a stored conversation: not a new one (nothing sent yet) or an unusable id.
  const stored = page.conversation !== null && page.turns.some((t) => t.turn);
  for (const [id, format] of [["export-json", "json"], ["export-markdown", "markdown"]]) {
    const link = $(id);
    link.hidden = !stored;
    if (stored) link.href = exportUrl(format);
  }
  menu.hidden = !open;
  $("more").setAttribute("aria-expanded", String(open));
  if (open) menu.querySelector("a:not([hidden]), button")?.focus();
  if (refocus) $("more").focus();
}

export function wireTransfer({ open, refreshList }) {
  Object.assign(hooks, { open, refreshList });
  const menu = $("conversation-menu");
  const toggle = $("more");
  const picker = $("import-file");
  toggle.addEventListener("click", () => setMenu(menu.hidden));
  menu.addEventListener("keydown", (event) => {
    if (event.key === "Escape") setMenu(false, { refocus: true });
  });
  // A click elsewhere, or the focus leaving it (Tab past the last item), closes it.
  document.addEventListener("click", (event) => {
    if (!menu.hidden && !menu.contains(event.target) && !toggle.contains(event.target)) setMenu(false);
  });
  menu.addEventListener("focusout", (event) => {
    if (event.relatedTarget && !menu.contains(event.relatedTarget)
        && !toggle.contains(event.relatedTarget)) setMenu(false);
  });
  for (const id of ["export-json", "export-markdown"]) {
    $(id).addEventListener("click", () => {
      setMenu(false, { refocus: true });
      announce("ファイルを保存します。");
    });
  }
  $("import").addEventListener("click", () => {
    if (working) return;
    setMenu(false, { refocus: true });
    picker.click();
  });
  picker.addEventListener("change", () => {
    const [file] = picker.files;
    picker.value = "";  // the same file can be chosen again
    if (file) importFile(file);
  });
}
