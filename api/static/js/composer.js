// The message box: Enter sends, Shift+Enter makes a new line, and an Enter that confirms a
// Japanese IME conversion never sends. A counter appears near the length limit; a longer message
// is refused with an explanation, never cut.

const COUNTER_FROM = 0.8;  // show the counter from 80 % of the limit

/** Length as the server counts it: code points of the trimmed text. */
export const messageLength = (text) => [...text.trim()].length;

export class Composer {
  constructor({ form, textarea, button, counter, maxChars, onSend, onTooLong, onEmptyKey }) {
    Object.assign(this, { form, textarea, button, counter, maxChars, onSend, onTooLong, onEmptyKey });
    this.sending = false;
    textarea.addEventListener("keydown", (event) => this.keydown(event));
    textarea.addEventListener("input", () => this.changed());
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.submit();
    });
    this.changed();
  }

  keydown(event) {
    // In an empty box the arrows act on the newest turn (↑ edit, ← → its replies).
    const plain = !(event.shiftKey || event.altKey || event.ctrlKey || event.metaKey || event.isComposing);
    if (plain && !this.textarea.value && this.onEmptyKey?.(event.key)) {
      event.preventDefault();
      return;
    }
    if (event.key !== "Enter" || event.shiftKey || event.altKey || event.ctrlKey || event.metaKey) return;
    // While an IME is composing, Enter confirms the conversion. keyCode 229 covers browsers that
    // report the confirming keydown after compositionend (Safari).
    if (event.isComposing || event.keyCode === 229) return;
    event.preventDefault();
    this.submit();
  }

  changed() {
    this.autosize();
    const length = messageLength(this.textarea.value);
    const over = length - this.maxChars;
    const near = length >= this.maxChars * COUNTER_FROM;
    this.counter.textContent = !near ? "" : over > 0
      ? `${length.toLocaleString("ja-JP")} / ${this.maxChars.toLocaleString("ja-JP")} 文字（${over.toLocaleString("ja-JP")} 文字オーバー）`
      : `${length.toLocaleString("ja-JP")} / ${this.maxChars.toLocaleString("ja-JP")} 文字`;
    this.counter.classList.toggle("over", over > 0);
    this.textarea.setAttribute("aria-invalid", String(over > 0));
  }

  autosize() {
    this.textarea.style.height = "auto";
    this.textarea.style.height = `${this.textarea.scrollHeight + 2}px`;
  }

  async submit() {
    if (this.sending || this.disabled) return;
    const text = this.textarea.value.trim();
    if (!text) return;
    const length = messageLength(text);
    if (length > this.maxChars) {
      this.onTooLong(length, this.maxChars);
      return;
    }
    this.setSending(true);
    this.textarea.value = "";
    this.changed();
    try {
      const accepted = await this.onSend(text);
      // Refused or taken back: the text comes back to the box (unless something new was typed).
      if (!accepted && !this.textarea.value) {
        this.textarea.value = text;
        this.changed();
      }
    } finally {
      this.setSending(false);
    }
  }

  setSending(sending) {
    this.sending = sending;
    this.button.disabled = sending || this.disabled;
    this.button.setAttribute("aria-busy", String(sending));
  }

  /** A conversation that cannot be written to (a bad id in the URL). */
  setDisabled(disabled) {
    this.disabled = disabled;
    this.textarea.disabled = disabled;
    this.setSending(this.sending);
  }

  focus() {
    this.textarea.focus();
  }
}
