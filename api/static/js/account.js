// Who is signed in, and signing out (the sidebar's foot). Nothing shows in the open mode
// (loopback, no tokens: nobody signs in). Signing out ends the session on the server
// (DELETE /api/session), or every session of the person (DELETE /api/sessions); either way
// the page then goes to the sign-in form.

import { request } from "./api.js";

const $ = (id) => document.getElementById(id);

export async function showAccount({ onError }) {
  let who;
  try {
    who = (await request("GET", "/api/session")).data;
  } catch {
    return;  // a 401 already took the page to the sign-in form; otherwise nothing to show
  }
  if (who.mode === "open" || !who.person) return;
  $("account-name").textContent = who.person;
  $("account").hidden = false;
  $("sign-out").addEventListener("click", () => signOut("/api/session", onError));
  $("sign-out-everywhere").addEventListener("click", () => signOut("/api/sessions", onError));
}

async function signOut(path, onError) {
  try {
    await request("DELETE", path);
  } catch (err) {
    onError(err);
    return;
  }
  location.assign("/signin");
}
