// The sign-in form's only script. A sign-in URL carries the token after '#' (the browser
// never sends the fragment, so the token reaches no server log). The link never signs in by
// itself: anyone can send a link with their own token, and the person's later chats would
// land in that account (login CSRF). So: take the token out of the address bar and history,
// ask the server whose it is (POST /api/session/preview makes no session), show the name and
// sign in only when the person presses the button.
const match = /(?:^#|&)token=([^&]+)/.exec(location.hash);
if (match) {
  history.replaceState(null, "", location.pathname + location.search);
  confirmLink(decodeURIComponent(match[1]));
}

async function confirmLink(token) {
  const form = document.getElementById("signin");
  const notice = document.getElementById("notice");
  const button = form.querySelector("button[type=submit]");
  let answer;
  try {
    answer = await fetch("/api/session/preview", {
      method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({token}), credentials: "same-origin",
      signal: AbortSignal.timeout(10000)});
  } catch {
    notice.textContent = "サーバーに接続できませんでした。トークンを入力してサインインしてください。";
    return;
  }
  if (!answer.ok) {
    const body = await answer.json().catch(() => null);
    notice.textContent = answer.status === 401
      ? "このリンクのトークンは使えません。トークンを入力してサインインしてください。"
      : (body?.error?.message ?? "確認できませんでした。もう一度試してください。");
    return;
  }
  const {person} = await answer.json();
  const who = document.createElement("span");
  who.id = "who";
  who.textContent = `しぃ と話す人: ${person}。`;
  notice.replaceChildren(who, document.createElement("br"), "サインインしますか？");
  form.elements.token.value = token;
  document.getElementById("token-label").hidden = true;
  document.getElementById("decline").hidden = false;
  button.textContent = `${person} としてサインインする`;
  button.focus();
}
