// Sign-in with a token: checked against GET /api/channels before it is kept.

import { call, session } from "./api.js";
import { errorBox, h, replace } from "./dom.js";

let message = null;

/** Say something on the next sign-in page (why the user is there). */
export function say(text) {
  message = text;
}

export function show(root, signedIn) {
  const input = h("input", {
    id: "token",
    name: "token",
    type: "password",
    autocomplete: "off",
    spellcheck: "false",
    required: true,
    "aria-describedby": "token-help",
  });
  const result = h("div", { "aria-live": "polite" });
  if (message) result.append(h("p", { class: "notice" }, message));
  message = null;
  const button = h("button", { type: "submit" }, "Sign in");
  const form = h(
    "form",
    { class: "panel signin", onsubmit: submit },
    h("h1", null, "Sign in to kwp"),
    h("label", { for: "token" }, "Token"),
    input,
    h(
      "p",
      { id: "token-help", class: "status" },
      "An admin token, a channel's api-read-token or a consumer's token. It stays in this tab " +
        "(sessionStorage) until you sign out or close it, and goes to kwp only in the Authorization header.",
    ),
    h("div", { class: "actions" }, button),
    result,
  );

  async function submit(event) {
    event.preventDefault();
    const token = input.value.trim();
    if (!token) {
      replace(result, errorBox("Enter a token."));
      return;
    }
    button.disabled = true;
    replace(result, h("p", { class: "notice" }, "Checking the token…"));
    try {
      await call("GET", "/api/channels", { token });
    } catch (error) {
      button.disabled = false;
      replace(result, errorBox(error.words));
      input.select();
      return;
    }
    input.value = "";
    session.start(token);
    signedIn();
  }

  replace(root, form);
  input.focus();
}
