// Live tail: the channel's webhooks as they are stored, from GET .../stream
// (Server-Sent Events; a consumer's token: those routed to its consumer).  A
// dropped stream is opened again with Last-Event-ID, so nothing the history
// still holds is missed, and nothing is shown twice.

import { channelPath } from "./api.js";
import { errorBox, h, headersTable, pretty, replace, timeAgo } from "./dom.js";
import { readStream } from "./sse.js";

const KEEP = 200;
const FIRST_DELAY = 1000;
const LONGEST_DELAY = 30000;

export function show(root, { channel }, app, signal) {
  const status = h("p", { class: "status", "aria-live": "polite", id: "tail-status" });
  const problem = h("div");
  const list = h("div", { class: "items", id: "tail" });
  const toggle = h("button", { type: "button" }, "Stop");
  let lastId = "";
  let stream = null;
  let delay = FIRST_DELAY;
  let serverDelay = null;
  let timer = null;

  function received(event) {
    if (event.type !== "webhook") return;
    let item;
    try {
      item = JSON.parse(event.data);
    } catch {
      return;
    }
    list.querySelector(".notice")?.remove();
    list.prepend(
      h(
        "article",
        { class: "item", "data-id": String(item.id), "aria-label": `Webhook ${item.id}` },
        h("header", null, h("span", { class: "id" }, `#${item.id}`), timeAgo(item.received_at)),
        h("details", null, h("summary", null, `Headers (${Object.keys(item.headers || {}).length})`), headersTable(item.headers)),
        h("pre", { class: "payload", tabindex: "0" }, pretty(item.payload)),
      ),
    );
    while (list.children.length > KEEP) list.lastElementChild.remove();
  }

  function stop(words) {
    stream?.abort();
    stream = null;
    clearTimeout(timer);
    timer = null;
    toggle.textContent = "Start";
    status.textContent = words;
  }

  function again(why) {
    const wait = serverDelay ?? delay;
    delay = Math.min(delay * 2, LONGEST_DELAY);
    status.textContent = `${why} Connecting again in ${Math.round(wait / 1000)} s${lastId ? `, from after #${lastId}` : ""}.`;
    timer = setTimeout(connect, wait);
  }

  async function connect() {
    timer = null;
    replace(problem);
    const mine = new AbortController();
    stream = mine;
    toggle.textContent = "Stop";
    status.textContent = "Connecting…";
    try {
      await readStream(channelPath(channel, "stream"), {
        lastEventId: lastId,
        signal: mine.signal,
        onOpen: () => {
          delay = FIRST_DELAY;
          status.textContent = "Live: new webhooks of this channel appear at the top.";
        },
        onEvent: received,
        onId: (id) => {
          lastId = id;
        },
        onRetry: (ms) => {
          serverDelay = ms;
        },
      });
      if (stream === mine) again("The stream ended.");
    } catch (error) {
      if (stream !== mine || error.name === "AbortError") return;
      if (error.status === 429) return again("Too many live streams on this channel (429).");
      if (error.status === undefined || error.status === 0) return again(`The stream broke: ${error.message}.`);
      stream = null;
      toggle.textContent = "Start";
      status.textContent = "Stopped.";
      replace(problem, errorBox(`Could not open the live stream: ${error.words}`));
    }
  }

  toggle.addEventListener("click", () => {
    if (stream || timer) {
      stop(`Stopped. Start goes on${lastId ? ` from after #${lastId}` : ""}.`);
    } else {
      connect();
    }
  });
  signal.addEventListener("abort", () => stop(""));

  list.append(h("p", { class: "notice" }, "Nothing yet: webhooks stored from now on appear here."));
  replace(
    root,
    h("div", { class: "toolbar" }, toggle, h("button", { type: "button", class: "quiet", onclick: () => replace(list) }, "Clear the list")),
    status,
    problem,
    list,
  );
  connect();
}
