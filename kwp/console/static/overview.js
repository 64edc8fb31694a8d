// The overview: every channel and consumer the token reaches, with its queue
// figures, refreshed live from GET /api/channels.

import { consumerQuery } from "./api.js";
import { errorBox, h, replace, timeAgo } from "./dom.js";
import { channelLink } from "./links.js";

function forwardState(consumer) {
  if (consumer.removed) return h("span", { class: "status" }, "nothing delivers it");
  if (consumer.kind !== "push") return h("span", { class: "status" }, "pulled");
  return consumer.paused ? h("span", { class: "badge warn" }, "paused") : h("span", { class: "badge ok" }, "forwarding");
}

function lastError(consumer) {
  if (consumer.last_error_at === null) return "—";
  return [timeAgo(consumer.last_error_at), h("br"), h("span", { class: "status" }, consumer.last_error_message || "")];
}

function removedBadge() {
  return h("span", { class: "badge warn", title: "Removed from config.yml; its queue still holds webhooks" }, "removed");
}

const HEADINGS = ["Consumer", "Kind", "Depth", "Oldest pending", "Dead", "Forwarding", "Last success", "Last error"];

function consumerRow(channel, consumer) {
  // One child per cell: on a phone a cell is a flex row of its label and that child.
  const cell = (label, ...content) => h("td", { "data-label": label }, h("span", null, ...content));
  const href = channelLink(channel.name, "queue", consumerQuery(channel, consumer.name));
  return h(
    "tr",
    { "data-key": `${channel.name}/${consumer.name}` },
    cell("Consumer", h("a", { href }, consumer.name), consumer.removed ? [" ", removedBadge()] : null),
    cell("Kind", consumer.kind),
    h("td", { "data-label": "Depth", class: "num depth" }, String(consumer.queue_size)),
    cell("Oldest pending", timeAgo(consumer.oldest_pending_at, "")),
    h("td", { "data-label": "Dead", class: "num dead" }, consumer.dead ? h("span", { class: "badge bad" }, String(consumer.dead)) : "0"),
    cell("Forwarding", forwardState(consumer)),
    cell("Last success", timeAgo(consumer.last_success_at)),
    cell("Last error", lastError(consumer)),
  );
}

/** A channel's rows: a heading row, then one row per consumer under it. */
function channelRows(channel) {
  const count = channel.consumers.length;
  return h(
    "tbody",
    { "data-channel": channel.name },
    h(
      "tr",
      { class: "channel" },
      h(
        "th",
        { scope: "rowgroup", colspan: String(HEADINGS.length) },
        h("a", { href: channelLink(channel.name, "queue") }, channel.name),
        channel.provider ? [" ", h("span", { class: "badge" }, channel.provider)] : null,
        " ",
        h("span", { class: "status" }, channel.named_consumers ? `${count} consumer${count === 1 ? "" : "s"}` : "one queue"),
      ),
    ),
    channel.consumers.map((consumer) => consumerRow(channel, consumer)),
  );
}

function table(channels) {
  return h(
    "div",
    { class: "table-wrap" },
    h(
      "table",
      { class: "rows", id: "channels" },
      h("caption", { class: "offscreen" }, "Channels, each with its consumers and their queues"),
      h("thead", null, h("tr", null, HEADINGS.map((text) => h("th", { scope: "col" }, text)))),
      channels.map(channelRows),
    ),
  );
}

function summary(channels) {
  const consumers = channels.flatMap((c) => c.consumers);
  const pending = consumers.reduce((sum, c) => sum + c.queue_size, 0);
  const dead = consumers.reduce((sum, c) => sum + c.dead, 0);
  const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;
  return `${plural(channels.length, "channel")}, ${plural(consumers.length, "consumer")}, ${plural(pending, "webhook")} queued, ${dead} dead.`;
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
