// A consumer's queue: GET .../list for a pull consumer, GET .../queue for a
// push consumer, with delete, and pause, resume, clear, retry and the replay
// of its dead letters for push; clear too for the queue of a consumer a
// reload removed.  Every call names the consumer (consumerQuery) on a
// channel whose consumers are named.

import { call, channelPath, consumerQuery } from "./api.js";
import { confirmAction, copyButton, errorBox, h, headersTable, pretty, replace, timeAgo, when } from "./dom.js";
import { replayWindow } from "./events.js";

const PAGE = 50;

function itemCard(item, extra, actions) {
  return h(
    "article",
    { class: "item", "data-id": String(item.id), "aria-label": `Webhook ${item.id}` },
    h("header", null, h("span", { class: "id" }, `#${item.id}`), timeAgo(item.received_at), extra, h("span", { class: "spacer" }), actions),
    h("details", null, h("summary", null, `Headers (${Object.keys(item.headers).length})`), headersTable(item.headers)),
    h("pre", { class: "payload", tabindex: "0", "aria-label": `Payload of webhook ${item.id}` }, pretty(item.payload)),
  );
}

function attemptWords(result) {
  if (result.success) return `delivered: the target answered ${result.status_code}.`;
  const why = result.status_code !== null ? `the target answered ${result.status_code}` : result.error;
  const body = result.body ? ` Its answer began: ${result.body.slice(0, 200)}` : "";
  return `not delivered: ${why}.${body}`;
}

export function show(root, { channel, info, consumer }, app, signal) {
  const query = consumerQuery(info, consumer?.name);
  const push = consumer?.kind === "push";
  const removed = Boolean(consumer?.removed);
  // What the messages call this queue: the channel, or channel/consumer.
  const queueName = query.consumer ? `${channel}/${query.consumer}` : channel;
  const said = h("div", { "aria-live": "polite" });
  const head = h("div");
  const list = h("div", { class: "items" });
  const more = h("button", { type: "button", class: "quiet", hidden: true, onclick: () => load(lastId) }, "Show more");
  let lastId = 0;

  const say = (text, ok = true) => replace(said, ok ? h("p", { class: "success" }, text) : errorBox(text));
  const refresh = () => {
    load(0);
    app.channels.refresh();
  };

  async function act(what, method, path, options) {
    try {
      const answer = await call(method, path, { query, signal, ...options });
      return answer ?? true;
    } catch (error) {
      if (error.name !== "AbortError") say(`Could not ${what}: ${error.words}`, false);
      return null;
    }
  }

  async function remove(item) {
    if (!(await confirmAction(`Delete webhook #${item.id} from this queue of ${queueName}? It cannot be recovered from the queue.`, "Delete"))) return;
    if (await act(`delete webhook #${item.id}`, "DELETE", channelPath(channel, String(item.id)))) {
      say(`Webhook #${item.id} deleted.`);
      refresh();
    }
  }

  async function retry(item) {
    const result = await act(`retry webhook #${item.id}`, "POST", channelPath(channel, "queue", "retry", String(item.id)));
    if (result) {
      say(`Webhook #${item.id}: ${attemptWords(result)}`, result.success);
      refresh();
    }
  }

  async function setPaused(paused) {
    if (await act(paused ? "pause" : "resume", "POST", channelPath(channel, "queue", paused ? "pause" : "resume"))) {
      say(paused ? "Forwarding paused." : "Forwarding resumed.");
      refresh();
    }
  }

  async function clear(size) {
    const question = `Clear the queue of ${queueName}? All ${size} webhook${size === 1 ? "" : "s"} in it, dead ones included, are deleted.`;
    if (!(await confirmAction(question, "Clear the queue"))) return;
    if (await act("clear the queue", "POST", channelPath(channel, "queue", "clear"))) {
      say("Queue cleared.");
      refresh();
    }
  }

  async function replayDead() {
    const question = `Replay the dead letters of ${queueName}? Each is queued again as a new delivery, with its attempts from 0.`;
    if (!(await confirmAction(question, "Replay"))) return;
    try {
      const count = await replayWindow(channel, { state: "dead", consumer: consumer.name }, signal);
      say(`${count} dead letter${count === 1 ? "" : "s"} queued again.`);
      refresh();
    } catch (error) {
      if (error.name !== "AbortError") say(`Could not replay the dead letters: ${error.words}`, false);
    }
  }

  function actions(item) {
    return [
      push ? h("button", { type: "button", onclick: () => retry(item) }, "Retry now") : null,
      copyButton("Copy payload", () => pretty(item.payload)),
      h("button", { type: "button", class: "danger", onclick: () => remove(item) }, "Delete"),
    ];
  }

  function pullExtra(item) {
    return item.deliveries ? h("span", { class: "badge warn" }, `handed out ${item.deliveries}×`) : null;
  }

  function pushExtra(item) {
    return [
      h("span", { class: item.state === "dead" ? "badge bad" : "badge" }, item.state),
      h("span", { class: "status" }, `${item.forward_attempts} attempt${item.forward_attempts === 1 ? "" : "s"}`),
      item.next_attempt_at !== null ? h("span", { class: "status" }, `next ${when(item.next_attempt_at)}`) : null,
      item.last_attempt_error ? h("span", { class: "status" }, `last error: ${item.last_attempt_error}`) : null,
    ];
  }

  function pushStatus(status) {
    const field = (label, ...value) => h("div", null, h("span", { class: "label" }, label), ...value);
    return h(
      "div",
      { class: "panel" },
      h(
        "div",
        { class: "grid" },
        field("Forwarding", status.paused ? h("span", { class: "badge warn" }, "paused") : h("span", { class: "badge ok" }, "running")),
        field("In the queue", String(status.queue_size)),
        field("Last success", timeAgo(status.last_success_at)),
        field("Last error", timeAgo(status.last_error_at), status.last_error_message ? [h("br"), status.last_error_message] : null),
      ),
      h(
        "div",
        { class: "actions" },
        status.paused
          ? h("button", { type: "button", onclick: () => setPaused(false) }, "Resume")
          : h("button", { type: "button", class: "quiet", onclick: () => setPaused(true) }, "Pause"),
        h("button", { type: "button", class: "quiet", onclick: replayDead }, "Replay dead letters"),
        h("button", { type: "button", class: "danger", onclick: () => clear(status.queue_size) }, "Clear the queue"),
        h("button", { type: "button", class: "quiet", onclick: refresh }, "Refresh"),
      ),
    );
  }

  async function load(after) {
    let items;
    try {
      if (push) {
        const body = await call("GET", channelPath(channel, "queue"), { query: { ...query, limit: PAGE, after }, signal });
        replace(head, pushStatus(body.status));
        items = body.items;
      } else {
        items = await call("GET", channelPath(channel, "list"), { query: { ...query, limit: PAGE, after }, signal });
        replace(
          head,
          h(
            "div",
            { class: "toolbar" },
            h("button", { type: "button", class: "quiet", onclick: refresh }, "Refresh"),
            removed ? h("button", { type: "button", class: "danger", onclick: () => clear(consumer.queue_size) }, "Clear the queue") : null,
          ),
        );
      }
    } catch (error) {
      if (error.name === "AbortError") return;
      replace(head);
      replace(list, errorBox(`Could not read the queue: ${error.words}`));
      more.hidden = true;
      return;
    }
    if (after === 0) replace(list);
    for (const item of items) list.append(itemCard(item, push ? pushExtra(item) : pullExtra(item), actions(item)));
    if (!list.children.length) list.append(h("p", { class: "notice" }, "The queue is empty."));
    lastId = items.length ? items[items.length - 1].id : lastId;
    more.hidden = items.length < PAGE;
  }

  const intro = removed
    ? `Consumer ${consumer.name} was removed from config.yml: nothing delivers these webhooks any more. Pull them with ?consumer=${consumer.name} or clear the queue.`
    : push
      ? `Push consumer ${consumer.name}: kwp forwards these webhooks.`
      : `Pull consumer ${consumer?.name ?? "default"}: these webhooks wait to be pulled.`;
  replace(
    root,
    h("p", { class: "status" }, intro),
    said,
    head,
    list,
    more,
  );
  load(0);
}
