// Page-wide bits every part of the chat page uses: looking up an element, the notice bar over
// the conversation, and the polite live region that speaks finished replies and results.

export const $ = (id) => document.getElementById(id);

export function showNotice(text, { newChatLink = false } = {}) {
  $("notice-text").textContent = text;
  $("notice-link").hidden = !newChatLink;
  $("notice").hidden = false;
}

export function clearNotice() {
  $("notice").hidden = true;
}

export function announce(text) {
  const announcer = $("announcer");
  announcer.textContent = "";
  setTimeout(() => { announcer.textContent = text; }, 50);  // a change, even for the same words
}
