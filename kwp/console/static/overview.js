// The overview: every channel and consumer the token reaches, with its queue
// figures, refreshed live from GET /api/channels.

import { consumerQuery } from "./api.js";
import { errorBox, h, replace, timeAgo } from "./dom.js";
import { channelLink } from "./links.js";

function forwardState(consumer) {
  if (consumer.kind !== "push") return h("span", { class: "status" }, "pulled");
  return consumer.paused ? h("span", { class: "badge warn" }, "paused") : h("span", { class: "badge ok" }, "forwarding");
}

function lastError(consumer) {
  if (consumer.last_error_at === null) return "—";
  return [timeAgo(consumer.last_error_at), h("br"), h("span", { class: "status" }, consumer.last_error_message || "")];
}

function row(channel, consumer) {
  // One child per cell: on a phone a cell is a flex row of its label and that child.
  const cell = (label, ...content) => h("td", { "data-label": label }, h("span", null, ...content));
  const href = channelLink(channel.name, "queue", consumerQuery(channel, consumer.name));
  return h(
    "tr",
    { "data-key": `${channel.name}/${consumer.name}` },
    cell("Channel", h("a", { href }, channel.name), channel.provider ? [" ", h("span", { class: "badge" }, channel.provider)] : null),
    cell("Consumer", consumer.name),
    cell("Kind", consumer.kind),
    h("td", { "data-label": "Depth", class: "num depth" }, String(consumer.queue_size)),
    cell("Oldest pending", timeAgo(consumer.oldest_pending_at, "")),
    h("td", { "data-label": "Dead", class: "num dead" }, consumer.dead ? h("span", { class: "badge bad" }, String(consumer.dead)) : "0"),
    cell("Forwarding", forwardState(consumer)),
    cell("Last success", timeAgo(consumer.last_success_at)),
    cell("Last error", lastError(consumer)),
  );
}

function table(channels) {
  const headings = ["Channel", "Consumer", "Kind", "Depth", "Oldest pending", "Dead", "Forwarding", "Last success", "Last error"];
  return h(
    "div",
    { class: "table-wrap" },
    h(
      "table",
      { class: "rows", id: "channels" },
      h("caption", { class: "offscreen" }, "Channels and consumers with their queues"),
      h("thead", null, h("tr", null, headings.map((text) => h("th", { scope: "col" }, text)))),
      h("tbody", null, channels.flatMap((channel) => channel.consumers.map((consumer) => row(channel, consumer)))),
    ),
  );
}

function summary(channels) {
  const consumers = channels.flatMap((c) => c.consumers);
  const pending = consumers.reduce((sum, c) => sum + c.queue_size, 0);
  const dead = consumers.reduce((sum, c) => sum + c.dead, 0);
  return `${channels.length} channel${channels.length === 1 ? "" : "s"}, ${pending} webhook${pending === 1 ? "" : "s"} queued, ${dead} dead.`;
}

export function show(root, app, signal) {
  const body = h("div");
  const status = h("p", { class: "status", "aria-live": "polite" });
  replace(root, h("h1", null, "Channels"), status, body);

  function update() {
    const channels = app.channels;
    if (channels.list === null) {
      replace(body, channels.error ? errorBox(channels.error.words) : h("p", { class: "notice" }, "Loading…"));
      return;
    }
    // Keep the keyboard focus on the same link across a refresh.
    const focused = body.contains(document.activeElement) ? document.activeElement.getAttribute("href") : null;
    replace(
      body,
      channels.list.length ? table(channels.list) : h("p", { class: "notice" }, "This token reaches no channel."),
    );
    if (focused) body.querySelector(`a[href="${CSS.escape(focused)}"]`)?.focus();
    const at = channels.updatedAt.toLocaleTimeString();
    status.textContent = channels.error
      ? `Could not refresh: ${channels.error.words} Showing the figures of ${at}.`
      : `${summary(channels.list)} Updated ${at}, every ${app.pollSeconds} s.`;
  }

  update();
  app.channels.addEventListener("change", update, { signal });
}
