// One turn of the conversation on screen: the user's message, then the reply as it stands
// (streaming, done, stopped or failed), with the controls that apply to it.
//
// A turn model: {key, turn, userText, state, text, job, error, retryable, sentAt,
//                actions, replies, chosen}
//   state:   sending | queued | in_progress | completed | failed | incomplete | cancelled | unknown
//   job:     {id, sequence, status, steps, created_at} (what the page knows of the turn's job)
//   actions: what the server offers on the turn now (regenerate, choose, edit, continue, ...);
//            empty while a job of the turn runs, refreshed from the history when it ends

import { isRetryableStatus, serverNow, states } from "./api.js";
import { renderMarkdown } from "./markdown.js";
import { MessageEditor, ReplyActions } from "./turnactions.js";

/** Being sent, or a job that has not ended (final statuses come from GET /api/states). */
export const isRunning = (state) => state === "sending" || states.job[state]?.final === false;

const STEP_LABELS = {
  load_history: "履歴を読み込み中",
  build_context: "文脈を準備中",
  generate: "生成中",
  save: "保存中",
};

/** A turn from the history endpoint (issue 9's TurnOut). */
export function turnFromHistory(t) {
  // A regenerate or continue that runs shows its own text, not the reply it will replace.
  const text = isRunning(t.state) ? t.job?.partial_reply : t.reply?.text ?? t.job?.partial_reply;
  return {
    key: `turn-${t.turn}`, turn: t.turn, userText: t.user.text, state: t.state,
    text: text ?? "",
    job: t.job ? { id: t.job.id, sequence: t.job.sequence, status: t.job.status } : null,
    error: t.job?.error ?? null, retryable: t.retryable, sentAt: t.user.created_at,
    userSeq: t.user.seq, actions: t.actions ?? [], replies: t.replies ?? 0, chosen: t.chosen ?? 0,
  };
}

/** Fold a job (JobOut) into its turn. */
export function applyJob(turn, job) {
  turn.turn = job.turn ?? turn.turn;
  turn.job = job;
  turn.state = job.status;
  turn.text = job.reply ?? job.partial_reply ?? "";
  turn.error = job.error ?? null;
  turn.retryable = isRetryableStatus(job.status);
  turn.actions = [];  // the history says what the turn offers once the job has ended
}

/** What the reply is doing now, in Japanese: the step and the time since the message was sent. */
export function statusText(turn) {
  if (turn.state === "sending") return turn.sendProblem ?? "送信中…";
  const since = Date.parse(turn.job?.created_at ?? turn.sentAt ?? "");
  const elapsed = Number.isNaN(since) ? "" : `・${Math.max(0, Math.floor((serverNow() - since) / 1000))} 秒`;
  if (turn.state === "queued") return `順番待ち${elapsed}`;
  const steps = turn.job?.steps ?? [];
  const step = steps.find((s) => s.status === "in_progress") ?? steps.find((s) => s.status === "pending");
  return `${STEP_LABELS[step?.name] ?? "返事を準備中"}${elapsed}`;
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

const shown = (node) => node instanceof HTMLElement && !node.closest("[hidden]");

function speaker(name) {
  return element("span", "visually-hidden", `${name}：`);
}

export class TurnView {
  constructor(turn, { onStop, onRetry, onAction }) {
    this.root = element("li", "turn");
    const user = element("div", "msg user");
    this.userText = element("span", "user-text");
    user.append(speaker("あなた"), this.userText);

    this.bubble = element("div", "msg assistant");
    this.reply = element("div", "reply");
    this.bubble.append(speaker("しぃ"), this.reply);

    this.status = element("div", "status");
    this.status.append(element("span", "spinner"));
    this.statusText = element("span", "status-text");
    this.stop = element("button", "button small quiet stop", "停止");
    this.stop.type = "button";
    this.stop.addEventListener("click", () => onStop(this.turn));
    this.status.append(this.statusText, this.stop);

    this.problem = element("div", "problem");
    this.problemText = element("span", "problem-text");
    this.retry = element("button", "button small retry", "もう一度試す");
    this.retry.type = "button";
    this.retry.addEventListener("click", () => onRetry(this.turn));
    this.problem.append(this.problemText, this.retry);

    const act = (name, arg) => onAction(this.turn, name, arg);
    this.replyActions = new ReplyActions(act);
    this.editor = new MessageEditor(act, user);

    this.root.append(user, this.editor.form, this.editor.root, this.bubble, this.status, this.problem,
                     this.replyActions.root);
    this.renderedText = null;
    this.update(turn);
  }

  update(turn) {
    // A keyboard user who pressed a button of the turn (停止, もう一度試す, もう一度, ...) keeps
    // the focus in the turn when that button goes away: it moves to the one that replaces it.
    const focused = this.root.contains(document.activeElement);
    this.render(turn);
    if (focused && !shown(document.activeElement)) {
      [this.retry, this.stop, ...this.replyActions.buttons, this.editor.edit].find(shown)?.focus();
    }
  }

  render(turn) {
    this.turn = turn;
    this.root.dataset.state = turn.state;
    this.root.dataset.key = turn.key;
    if (turn.job?.id) this.root.dataset.jobId = turn.job.id;
    this.userText.textContent = turn.userText;
    this.showReply(turn);
    this.showStatus(turn);
    this.showProblem(turn);
    const running = isRunning(turn.state);
    this.replyActions.update(turn, { running });
    this.editor.update(turn, { running });
  }

  /** ↑ in an empty message box: edit this (the newest) message, when the server offers it. */
  startEditing() {
    if (!this.editor.offered || isRunning(this.turn.state)) return false;
    this.editor.open();
    return true;
  }

  showReply(turn) {
    const running = isRunning(turn.state);
    this.bubble.hidden = !turn.text && !(running && turn.state !== "sending");
    this.bubble.classList.toggle("waiting", !turn.text);
    if (turn.text !== this.renderedText) {
      if (turn.text) this.reply.replaceChildren(renderMarkdown(turn.text));
      else this.reply.replaceChildren(element("span", null, "…"));
      this.renderedText = turn.text;
    }
    this.reply.classList.toggle("streaming", running && Boolean(turn.text));
  }

  showStatus(turn) {
    this.status.hidden = !isRunning(turn.state);
    this.statusText.textContent = statusText(turn);
    // A message still being sent can be taken back; a job can be stopped.
    this.stop.textContent = turn.state === "sending" ? "取り消す" : "停止";
    this.stop.setAttribute("aria-label", turn.state === "sending" ? "送信を取り消す" : "返事の生成を停止");
  }

  showProblem(turn) {
    // What to say, and whether quietly, comes from GET /api/states (core/states.py).
    const { ending = null, quiet = false } = states.turn[turn.state] ?? {};
    this.problem.hidden = !ending;
    if (!ending) {
      // No stale words left behind: the box of a retried reply says nothing until it ends again.
      this.problemText.textContent = "";
      return;
    }
    const detail = quiet ? "" : (turn.error?.message ?? "");
    this.problemText.textContent = detail ? `${ending}${detail}` : ending;
    this.problem.classList.toggle("quiet", quiet);
    this.retry.hidden = !turn.retryable;
    this.problem.setAttribute("role", "group");
    this.problem.setAttribute("aria-label", "返事の状態");
  }

  /** While a stop or retry is on its way: announced as unavailable, yet still focusable. */
  setBusy(kind, busy) {
    if (kind === "stop") this.stop.setAttribute("aria-disabled", String(busy));
    else if (kind === "retry") this.retry.setAttribute("aria-disabled", String(busy));
    else if (kind === "edit") this.editor.setBusy(busy);
    else this.replyActions.setBusy(busy);
  }

  tick() {
    if (isRunning(this.turn.state)) this.statusText.textContent = statusText(this.turn);
  }
}
