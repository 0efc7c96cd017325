// The conversation list (newest activity first) and, on a phone, the drawer that holds it.

const PHONE = window.matchMedia("(max-width: 760px)");
// The server's pattern (core/contract.py), given with the page: declared once.
const CONVERSATION_ID = new RegExp(`^(?:${document.body.dataset.conversationId})$`);

export const validConversationId = (id) => CONVERSATION_ID.test(id);

/** A fresh conversation id; getRandomValues works on plain http too (a phone on the LAN). */
export function newConversationId() {
  const bytes = crypto.getRandomValues(new Uint8Array(6));
  return `c-${[...bytes].map((b) => b.toString(16).padStart(2, "0")).join("")}`;
}

export const conversationUrl = (id) => `/?conversation_id=${encodeURIComponent(id)}`;

function when(iso) {
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return "";
  const today = new Date().toDateString() === date.toDateString();
  return date.toLocaleString("ja-JP", today ? { hour: "2-digit", minute: "2-digit" }
                                            : { month: "numeric", day: "numeric" });
}

export class Sidebar {
  constructor({ aside, list, status, menu, scrim, onOpen }) {
    Object.assign(this, { aside, list, status, menu, scrim, onOpen });
    this.conversations = [];
    menu.addEventListener("click", () => this.setDrawer(!aside.classList.contains("open")));
    scrim.addEventListener("click", () => this.setDrawer(false));
    aside.querySelector(".drawer-close").addEventListener("click", () => {
      this.setDrawer(false, { restoreFocus: true });
    });
    aside.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && PHONE.matches) this.setDrawer(false, { restoreFocus: true });
    });
    list.addEventListener("click", (event) => this.clicked(event));
    PHONE.addEventListener("change", () => this.setDrawer(false));
    this.setDrawer(false);
  }

  clicked(event) {
    const link = event.target.closest("a[data-id]");
    if (!link || event.ctrlKey || event.metaKey || event.shiftKey || event.button !== 0) return;
    event.preventDefault();
    this.setDrawer(false);
    this.onOpen(link.dataset.id);
  }

  /** On a phone the list is a drawer: out of the tab order and the accessibility tree when shut. */
  setDrawer(open, { restoreFocus = false } = {}) {
    const drawer = PHONE.matches;
    this.aside.classList.toggle("open", drawer && open);
    this.aside.inert = drawer && !open;
    this.scrim.hidden = !(drawer && open);
    this.menu.setAttribute("aria-expanded", String(drawer && open));
    this.menu.setAttribute("aria-label", drawer && open ? "会話一覧を閉じる" : "会話一覧を開く");
    if (drawer && open) (this.list.querySelector("[aria-current]") ?? this.aside.querySelector("button"))?.focus();
    if (restoreFocus) this.menu.focus();
  }

  /** conversations: issue 9's ConversationOut list; current: the open conversation's id. */
  render(conversations, current) {
    this.conversations = conversations;
    const items = conversations.map((c) => this.item(c.id, c.title || "（無題）", c, c.id === current));
    if (current && !conversations.some((c) => c.id === current)) {
      items.unshift(this.item(current, "新しい会話", null, true));
    }
    this.list.replaceChildren(...items);
    this.status.textContent = items.length ? "" : "まだ会話はありません。";
  }

  item(id, title, conversation, current) {
    const li = document.createElement("li");
    const link = document.createElement("a");
    link.href = conversationUrl(id);
    link.dataset.id = id;
    if (current) link.setAttribute("aria-current", "page");
    const name = document.createElement("span");
    name.className = "conversation-title";
    name.textContent = title;
    const meta = document.createElement("span");
    meta.className = "conversation-meta";
    meta.textContent = conversation
      ? [when(conversation.last_activity), `${conversation.message_count} 件`,
         conversation.job_running ? "返事を作成中" : ""].filter(Boolean).join("・")
      : "まだメッセージはありません";
    link.append(name, meta);
    li.append(link);
    return li;
  }

  titleOf(id) {
    return this.conversations.find((c) => c.id === id)?.title ?? null;
  }

  showError(message) {
    this.status.textContent = message;
  }
}
