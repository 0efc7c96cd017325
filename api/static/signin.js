// The sign-in form's only script. A sign-in URL carries the token after '#' (the browser
// never sends the fragment, so the token reaches no server log): put it in the form, take it
// out of the address bar and history, and send the form.
const match = /(?:^#|&)token=([^&]+)/.exec(location.hash);
if (match) {
  const form = document.getElementById("signin");
  form.elements.token.value = decodeURIComponent(match[1]);
  history.replaceState(null, "", location.pathname + location.search);
  form.submit();
}
