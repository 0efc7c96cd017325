// The controls of a finished turn, shown from the actions the server lists for it
// (TurnOut.actions): under the newest reply ← k/n →, もう一度 and 続ける; under every
// finished reply ここから分岐; under the newest message 編集, which opens the message in place
// for correcting and sending again.
//
// Each control calls onAction(name, arg): "choose" (the index wanted), "regenerate",
// "continue", "edit" (the corrected text), "branch".

function button(className, text, label, onClick) {
  const node = document.createElement("button");
  node.type = "button";
  node.className = `button small quiet ${className}`;
  node.textContent = text;
  node.setAttribute("aria-label", label);
  node.addEventListener("click", onClick);
  return node;
}

/** ← k/n →, もう一度, 続ける: under the newest reply; ここから分岐 under any finished one. */
export class ReplyActions {
  constructor(onAction) {
    this.root = document.createElement("div");
    this.root.className = "turn-actions reply-actions";
    this.root.setAttribute("role", "group");
    this.root.setAttribute("aria-label", "返事の操作");
    this.prev = button("prev", "←", "前の返事", () => this.choose(-1, onAction));
    this.count = document.createElement("span");
    this.count.className = "reply-count";
    this.next = button("next", "→", "次の返事", () => this.choose(1, onAction));
    this.regenerate = button("regenerate", "もう一度", "別の返事を作る", () => onAction("regenerate"));
    this.continue = button("continue", "続ける", "返事の続きを書かせる", () => onAction("continue"));
    this.branch = button("branch", "ここから分岐", "ここから分岐", () => onAction("branch"));
    this.root.append(this.prev, this.count, this.next, this.regenerate, this.continue, this.branch);
    this.turn = null;
  }

  /** → on the last reply makes a new one (as SillyTavern does); ← on the first does nothing. */
  choose(step, onAction) {
    const { replies, chosen } = this.turn;
    const index = chosen + step;
    if (index < 0) return;
    if (index >= replies) {
      if (this.turn.actions.includes("regenerate")) onAction("regenerate");
      return;
    }
    onAction("choose", index);
  }

  update(turn, { running }) {
    this.turn = turn;
    const offers = (action) => !running && turn.actions.includes(action);
    const choosing = offers("choose") && turn.replies > 1;
    for (const node of [this.prev, this.count, this.next]) node.hidden = !choosing;
    if (choosing) {
      this.count.textContent = `${turn.chosen + 1}/${turn.replies}`;
      this.count.setAttribute("aria-label", `${turn.replies} 件中 ${turn.chosen + 1} 件目の返事`);
      this.prev.disabled = turn.chosen === 0;
      const last = turn.chosen >= turn.replies - 1;
      this.next.setAttribute("aria-label", last ? "次の返事（新しく作る）" : "次の返事");
    }
    this.regenerate.hidden = !offers("regenerate");
    this.continue.hidden = !offers("continue");
    this.branch.hidden = !offers("branch");
    // Many turns have one: the name says which.
    this.branch.setAttribute("aria-label", `ここから分岐：${turn.turn} 番目までを新しい会話に`);
    this.root.hidden = [this.prev, this.regenerate, this.continue, this.branch].every((n) => n.hidden);
  }

  setBusy(busy) {
    for (const node of [this.prev, this.next, this.regenerate, this.continue, this.branch]) {
      node.setAttribute("aria-disabled", String(busy));
    }
  }

  get buttons() {
    return [this.regenerate, this.continue, this.next, this.prev, this.branch];
  }
}

/** 編集 under the newest message, and the form that replaces the message while editing. */
export class MessageEditor {
  constructor(onAction, message) {
    this.onAction = onAction;
    this.message = message;  // the message's bubble, hidden while the form replaces it
    this.root = document.createElement("div");
    this.root.className = "turn-actions user-actions";
    this.edit = button("edit", "編集", "メッセージを編集", () => this.open());
    this.root.append(this.edit);

    this.form = document.createElement("form");
    this.form.className = "edit-form";
    this.form.hidden = true;
    this.textarea = document.createElement("textarea");
    this.textarea.rows = 2;
    this.textarea.setAttribute("aria-label", "編集するメッセージ");
    const send = button("primary edit-send", "送信", "編集したメッセージを送信", () => this.submit());
    send.classList.remove("quiet");
    const cancel = button("edit-cancel", "キャンセル", "編集をやめる", () => this.close());
    const row = document.createElement("div");
    row.className = "edit-buttons";
    row.append(cancel, send);
    this.form.append(this.textarea, row);
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.submit();
    });
    this.textarea.addEventListener("keydown", (event) => {
      if (event.key === "Escape") {
        event.preventDefault();
        this.close();
      } else if (event.key === "Enter" && !event.shiftKey && !event.isComposing && event.keyCode !== 229) {
        event.preventDefault();
        this.submit();
      }
    });
    this.turn = null;
    this.editing = false;
  }

  get offered() {
    return Boolean(this.turn?.actions.includes("edit"));
  }

  open() {
    if (!this.offered) return;
    this.editing = true;
    this.textarea.value = this.turn.userText;
    this.update(this.turn, { running: false });
    this.textarea.focus();
    this.textarea.setSelectionRange(this.textarea.value.length, this.textarea.value.length);
  }

  close({ refocus = true } = {}) {
    this.editing = false;
    this.update(this.turn, { running: false });
    if (refocus) this.edit.focus();
  }

  async submit() {
    const text = this.textarea.value.trim();
    if (!text) return;
    if (text === this.turn.userText) {
      this.close();
      return;
    }
    const accepted = await this.onAction("edit", text);
    if (accepted) this.close({ refocus: false });
  }

  update(turn, { running }) {
    this.turn = turn;
    if (running || !this.offered) this.editing = false;
    this.form.hidden = !this.editing;
    this.message.hidden = this.editing;
    this.root.hidden = this.editing || running || !this.offered;
  }

  setBusy(busy) {
    this.edit.setAttribute("aria-disabled", String(busy));
    this.form.setAttribute("aria-busy", String(busy));
  }
}
