// The console's shell: sign-in, the session, the live channel figures, the
// theme, and the router from the URL's fragment (#/...) to the views.

import { call, events, session } from "./api.js";
import { errorBox, h, replace } from "./dom.js";
import * as overview from "./overview.js";
import * as channelPage from "./channel.js";
import * as signin from "./signin.js";

const main = document.getElementById("main");
const signOutButton = document.getElementById("sign-out");
const themeButton = document.getElementById("theme");

// How often GET /api/channels refreshes the figures while the tab is visible.
const POLL_SECONDS = 3;

/** What the views share: the channels the token reaches, refreshed live. */
class Channels extends EventTarget {
  constructor() {
    super();
    this.list = null;
    this.updatedAt = null;
    this.error = null;
  }

  find(name) {
    return this.list?.find((c) => c.name === name);
  }

  async refresh() {
    try {
      const body = await call("GET", "/api/channels");
      this.list = body.channels;
      this.updatedAt = new Date();
      this.error = null;
    } catch (error) {
      this.error = error;
    }
    this.dispatchEvent(new Event("change"));
  }
}

const app = { channels: new Channels(), pollSeconds: POLL_SECONDS };
let timer = null;
let view = null;

function startPolling() {
  stopPolling();
  timer = setInterval(() => {
    if (!document.hidden) app.channels.refresh();
  }, POLL_SECONDS * 1000);
}

function stopPolling() {
  clearInterval(timer);
  timer = null;
}

document.addEventListener("visibilitychange", () => {
  if (!document.hidden && timer !== null) app.channels.refresh();
});

/** The route of the URL's fragment: {parts, query}. */
function currentRoute() {
  const raw = location.hash.replace(/^#/, "") || "/";
  const mark = raw.indexOf("?");
  const path = mark < 0 ? raw : raw.slice(0, mark);
  const query = new URLSearchParams(mark < 0 ? "" : raw.slice(mark + 1));
  let parts;
  try {
    parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  } catch {
    parts = ["?"];
  }
  return { parts, query };
}

function render() {
  view?.abort();
  view = new AbortController();
  if (!session.token()) {
    signOutButton.hidden = true;
    signin.show(main, signedIn);
    return;
  }
  signOutButton.hidden = false;
  const route = currentRoute();
  const [first, channel, ...rest] = route.parts;
  if (first === undefined) {
    overview.show(main, app, view.signal);
  } else if (first === "c" && channel !== undefined) {
    channelPage.show(main, { channel, rest, query: route.query }, app, view.signal);
  } else {
    replace(main, h("h1", null, "No such page"), errorBox(`The console has no page ${location.hash}.`), h("a", { href: "#/" }, "Back to the overview"));
  }
  main.focus({ preventScroll: true });
}

async function signedIn() {
  await app.channels.refresh();
  if (!session.token()) return;
  startPolling();
  render();
}

function signOut(message) {
  session.end();
  stopPolling();
  app.channels.list = null;
  signin.say(message);
  if (location.hash && location.hash !== "#/") location.hash = "#/";
  else render();
}

signOutButton.addEventListener("click", () => signOut("Signed out. The token was removed from this tab."));
events.addEventListener("unauthorized", (event) => signOut(`kwp no longer accepts this token: ${event.detail.detail}. Sign in again.`));
window.addEventListener("hashchange", render);

// Theme: auto (the system's), then dark, then light; kept in localStorage,
// which holds no secret.
const THEMES = ["auto", "dark", "light"];

function applyTheme(theme) {
  if (theme === "auto") document.documentElement.removeAttribute("data-theme");
  else document.documentElement.setAttribute("data-theme", theme);
  themeButton.textContent = `Theme: ${theme}`;
}

function storedTheme() {
  try {
    return localStorage.getItem("kwp.theme") || "auto";
  } catch {
    return "auto";
  }
}

themeButton.addEventListener("click", () => {
  const next = THEMES[(THEMES.indexOf(storedTheme()) + 1) % THEMES.length];
  try {
    localStorage.setItem("kwp.theme", next);
  } catch {
    // Storage refused (a private window): the choice lasts this page only.
  }
  applyTheme(next);
});

applyTheme(storedTheme());
if (session.token()) {
  signedIn();
} else {
  render();
}
