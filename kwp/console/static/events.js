// The history of a channel (GET .../events): search by state, consumer, time
// and a JMESPath filter, page by page; one event with its deliveries and
// attempt log; replay one, a selection or everything matching; purge.

import { call, channelPath } from "./api.js";
import { confirmAction, copyButton, errorBox, h, headersTable, pretty, replace, timeAgo, when } from "./dom.js";
import { channelLink } from "./links.js";

const PAGE = 50;
const STATES = ["pending", "delivered", "dead", "filtered"];
const SEARCH_KEYS = ["state", "consumer", "since", "until", "filter"];
// Said once on the next page shown (after a purge, which leaves the event).
let flash = null;

function stateBadge(state) {
  const tone = { delivered: "ok", dead: "bad", pending: "warn" }[state] ?? "";
  return h("span", { class: `badge ${tone}` }, state);
}

const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;

/**
 * Queue again every webhook of a window (POST .../replay), going on from
 * each answer's next_after until the window is done; resolves with how many
 * were queued again.  progress(count) is told between calls.
 */
export async function replayWindow(channel, body, signal, progress = () => {}) {
  let count = 0;
  let after = null;
  for (;;) {
    const answer = await call("POST", channelPath(channel, "replay"), { json: after ? { ...body, after } : body, signal });
    count += answer.count;
    if (!answer.next_after) return count;
    after = answer.next_after;
    progress(count);
  }
}

/** datetime-local text for unix seconds, in local time. */
function localInput(seconds) {
  if (!seconds) return "";
  const d = new Date(Number(seconds) * 1000);
  const two = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${two(d.getMonth() + 1)}-${two(d.getDate())}T${two(d.getHours())}:${two(d.getMinutes())}`;
}

function seconds(localText) {
  if (!localText) return "";
  const ms = new Date(localText).getTime();
  return Number.isNaN(ms) ? "" : String(Math.floor(ms / 1000));
}

function describeSearch(search) {
  const parts = SEARCH_KEYS.filter((k) => search[k]).map((k) =>
    k === "since" || k === "until" ? `${k} ${when(Number(search[k]))}` : `${k} ${search[k]}`,
  );
  return parts.length ? parts.join(", ") : "everything";
}

export function show(root, context, app, signal) {
  if (context.rest.length) return showEvent(root, context, app, signal);
  return showList(root, context, app, signal);
}

function searchForm(channel, info, search) {
  const field = (label, id, control) => h("div", null, h("label", { for: id }, label), control);
  const state = h("select", { id: "search-state", name: "state" }, h("option", { value: "" }, "any"), STATES.map((s) => h("option", { value: s, selected: search.state === s }, s)));
  const names = (info?.consumers ?? []).map((c) => c.name);
  if (search.consumer && !names.includes(search.consumer)) names.push(search.consumer);
  const consumer = h(
    "select",
    { id: "search-consumer", name: "consumer" },
    h("option", { value: "" }, "any"),
    names.map((name) => h("option", { value: name, selected: search.consumer === name }, name)),
  );
  const since = h("input", { id: "search-since", type: "datetime-local", value: localInput(search.since) });
  const until = h("input", { id: "search-until", type: "datetime-local", value: localInput(search.until) });
  const filter = h("input", {
    id: "search-filter",
    type: "text",
    value: search.filter || "",
    placeholder: "headers.\"x-github-event\" == 'push'",
    spellcheck: "false",
  });
  return h(
    "form",
    {
      class: "panel search",
      role: "search",
      onsubmit: (event) => {
        event.preventDefault();
        location.hash = channelLink(channel, "events", {
          state: state.value,
          consumer: consumer.value,
          since: seconds(since.value),
          until: seconds(until.value),
          filter: filter.value.trim(),
        });
      },
    },
    field("State", "search-state", state),
    field("Consumer", "search-consumer", consumer),
    field("Since", "search-since", since),
    field("Until", "search-until", until),
    h("div", { class: "wide" }, h("label", { for: "search-filter" }, "Filter (JMESPath over headers and body)"), filter),
    h("div", { class: "actions wide" }, h("button", { type: "submit" }, "Search"), h("a", { href: channelLink(channel, "events"), class: "button quiet" }, "Reset")),
  );
}

function showList(root, { channel, info, query }, app, signal) {
  const search = Object.fromEntries(SEARCH_KEYS.map((k) => [k, query.get(k) || ""]));
  const said = h("div", { "aria-live": "polite" });
  const rows = h("tbody");
  const table = h(
    "div",
    { class: "table-wrap", hidden: true },
    h(
      "table",
      { class: "rows", id: "events" },
      h("thead", null, h("tr", null, ["Select", "Event", "Received", "Size", "State", "Deliveries", "Payload"].map((t) => h("th", { scope: "col" }, t)))),
      rows,
    ),
  );
  const note = h("div", { id: "events-note" });
  const more = h("button", { type: "button", class: "quiet", hidden: true }, "Load older");
  const selected = new Set();
  const replaySelected = h("button", { type: "button", disabled: true, onclick: replaySome }, "Replay selected");
  const canReplayAll = Boolean(search.since || search.state || search.filter);
  const replayAll = h(
    "button",
    { type: "button", class: "quiet", disabled: !canReplayAll, title: canReplayAll ? null : "Search by time, state or filter first", onclick: replayMatching },
    "Replay all matching",
  );
  let before = null;

  const say = (text, ok = true) => replace(said, ok ? h("p", { class: "success" }, text) : errorBox(text));
  const searchBody = () => Object.fromEntries(Object.entries(search).filter(([, v]) => v).map(([k, v]) => [k, k === "since" || k === "until" ? Number(v) : v]));

  function choose(id, on) {
    if (on) selected.add(id);
    else selected.delete(id);
    replaySelected.disabled = !selected.size;
    replaySelected.textContent = selected.size ? `Replay selected (${selected.size})` : "Replay selected";
  }

  async function replaySome() {
    const json = search.consumer ? { consumers: [search.consumer] } : undefined;
    const lines = [];
    let failed = false;
    for (const id of [...selected].sort((a, b) => a - b)) {
      try {
        const answer = await call("POST", channelPath(channel, "events", String(id), "replay"), { json, signal });
        const pending = answer.already_pending.length ? `, already pending for ${answer.already_pending.join(", ")}` : "";
        lines.push(`#${id}: replayed to ${answer.replayed.join(", ") || "no consumer"}${pending}.`);
      } catch (error) {
        if (error.name === "AbortError") return;
        failed = true;
        lines.push(`#${id}: ${error.words}`);
      }
    }
    say(lines.join(" "), !failed);
    reload();
  }

  async function replayMatching() {
    const question = `Replay every webhook of ${channel} matching ${describeSearch(search)}? Each is queued again at the tail of its consumers' queues.`;
    if (!(await confirmAction(question, "Replay"))) return;
    try {
      const count = await replayWindow(channel, searchBody(), signal, (n) => say(`Replayed ${n} so far; going on…`));
      say(`Replayed ${plural(count, "webhook")}.`);
      reload();
    } catch (error) {
      if (error.name !== "AbortError") say(`Could not replay: ${error.words}`, false);
    }
  }

  function row(item) {
    const box = h("input", { type: "checkbox", "aria-label": `Select event ${item.id}`, onchange: (e) => choose(item.id, e.target.checked) });
    const text = JSON.stringify(item.payload) ?? "";
    return h(
      "tr",
      { "data-id": String(item.id) },
      h("td", { "data-label": "Select" }, box),
      h("td", { "data-label": "Event" }, h("a", { href: channelLink(channel, `events/${item.id}`) }, `#${item.id}`)),
      h("td", { "data-label": "Received" }, timeAgo(item.received_at)),
      h("td", { "data-label": "Size", class: "num" }, `${item.size} B`),
      h("td", { "data-label": "State" }, stateBadge(item.state)),
      h("td", { "data-label": "Deliveries" }, h("span", null, item.consumers.length ? item.consumers.map((c, i) => [i ? " " : "", h("span", { class: "delivery" }, c.name, " ", stateBadge(c.state))]) : "none")),
      h("td", { "data-label": "Payload" }, h("code", null, text.length > 80 ? `${text.slice(0, 80)}…` : text)),
    );
  }

  async function load() {
    more.disabled = true;
    try {
      const body = await call("GET", channelPath(channel, "events"), { query: { ...search, limit: PAGE, before }, signal });
      body.items.forEach((item) => rows.append(row(item)));
      before = body.next_before;
      table.hidden = !rows.children.length;
      more.hidden = before === null;
      // A filter reads a bounded number of webhooks per call: a page may be
      // short, even empty, while older ones remain.
      if (rows.children.length) replace(note);
      else replace(note, h("p", { class: "notice" }, before === null ? "No event matches." : "None of the webhooks read so far matches; Load older reads on."));
    } catch (error) {
      if (error.name === "AbortError") return;
      replace(note, errorBox(`Could not read the history: ${error.words}`));
      more.hidden = true;
    } finally {
      more.disabled = false;
    }
  }

  function reload() {
    rows.replaceChildren();
    selected.clear();
    choose(null, false);
    before = null;
    load();
    app.channels.refresh();
  }

  more.addEventListener("click", load);
  if (flash) {
    say(flash);
    flash = null;
  }
  replace(root, searchForm(channel, info, search), said, h("div", { class: "toolbar" }, replaySelected, replayAll), table, note, more);
  load();
}

function attemptLog(log) {
  if (!log?.length) return null;
  return h(
    "details",
    null,
    h("summary", null, `Attempt log (${log.length})`),
    h(
      "div",
      { class: "table-wrap" },
      h(
        "table",
        { class: "rows log" },
        h("thead", null, h("tr", null, ["At", "Status", "Duration", "Answer"].map((t) => h("th", { scope: "col" }, t)))),
        h(
          "tbody",
          null,
          log.map((a) =>
            h(
              "tr",
              null,
              h("td", { "data-label": "At" }, when(a.at)),
              h("td", { "data-label": "Status" }, a.status_code !== null ? String(a.status_code) : a.error || "—"),
              h("td", { "data-label": "Duration", class: "num" }, a.duration_ms !== null ? `${a.duration_ms} ms` : "—"),
              h("td", { "data-label": "Answer" }, h("code", null, a.response_excerpt || "")),
            ),
          ),
        ),
      ),
    ),
  );
}

function deliveries(consumers) {
  if (!consumers.length) return h("p", { class: "notice" }, "No consumer took this webhook (filtered).");
  const status = (text) => h("span", { class: "status" }, text);
  return consumers.map((c) =>
    h(
      "div",
      { class: "item", "data-consumer": c.name },
      h(
        "header",
        null,
        h("span", { class: "id" }, c.name),
        stateBadge(c.state),
        c.attempts ? status(plural(c.attempts, "attempt")) : null,
        c.handouts ? status(`handed out ${c.handouts}×, last ${when(c.taken_at)}`) : null,
        c.delivered_at !== null ? status(`delivered ${when(c.delivered_at)}`) : null,
        c.next_attempt_at !== null ? status(`next attempt ${when(c.next_attempt_at)}`) : null,
        c.last_status !== null ? status(`last status ${c.last_status}`) : null,
      ),
      c.last_error ? h("p", { class: "status" }, `Last error: ${c.last_error}`) : null,
      attemptLog(c.log),
    ),
  );
}

function showEvent(root, { channel, info, rest }, app, signal) {
  const id = rest[0];
  const back = h("p", null, h("a", { href: channelLink(channel, "events") }, "← Events"));
  const said = h("div", { "aria-live": "polite" });
  const content = h("div", null, h("p", { class: "notice" }, "Loading…"));
  const say = (text, ok = true) => replace(said, ok ? h("p", { class: "success" }, text) : errorBox(text));
  let boxes = [];

  async function replay() {
    const chosen = boxes.filter((b) => b.checked).map((b) => b.value);
    if (!chosen.length) return say("Choose at least one consumer to replay to.", false);
    try {
      const answer = await call("POST", channelPath(channel, "events", id, "replay"), { json: { consumers: chosen }, signal });
      const pending = answer.already_pending.length ? ` Already pending for ${answer.already_pending.join(", ")}.` : "";
      say(`Replayed to ${answer.replayed.join(", ") || "no consumer"}.${pending}`);
      app.channels.refresh();
      load();
    } catch (error) {
      if (error.name !== "AbortError") say(`Could not replay: ${error.words}`, false);
    }
  }

  async function purge() {
    const question = `Purge webhook #${id} of ${channel}? Its body, every queue entry and its history are deleted for good.`;
    if (!(await confirmAction(question, "Purge"))) return;
    try {
      await call("DELETE", channelPath(channel, "events", id), { signal });
      flash = `Webhook #${id} purged.`;
      app.channels.refresh();
      location.hash = channelLink(channel, "events");
    } catch (error) {
      if (error.name !== "AbortError") say(`Could not purge: ${error.words}`, false);
    }
  }

  function render(item) {
    const routed = new Set(item.consumers.map((c) => c.name));
    const names = [...new Set([...(info?.consumers ?? []).map((c) => c.name), ...routed])];
    const checked = new Set(boxes.filter((b) => b.checked).map((b) => b.value));
    boxes = names.map((name) => h("input", { type: "checkbox", value: name, checked: boxes.length ? checked.has(name) : routed.has(name), id: `replay-${name}` }));
    replace(
      content,
      h("h2", null, `Webhook #${item.id} `, stateBadge(item.state)),
      h(
        "div",
        { class: "panel" },
        h(
          "div",
          { class: "grid" },
          h("div", null, h("span", { class: "label" }, "Received"), when(item.received_at), " (", timeAgo(item.received_at), ")"),
          h("div", null, h("span", { class: "label" }, "Size"), `${item.size} bytes`),
        ),
        h(
          "fieldset",
          { class: "actions" },
          h("legend", null, "Replay to"),
          names.map((name, i) => h("label", { class: "inline", for: `replay-${name}` }, boxes[i], name)),
          h("button", { type: "button", onclick: replay }, "Replay"),
          h("button", { type: "button", class: "danger", onclick: purge }, "Purge"),
        ),
      ),
      h("h2", null, "Deliveries"),
      deliveries(item.consumers),
      h("h2", null, "Headers"),
      headersTable(item.headers),
      h("h2", null, "Payload"),
      h("div", { class: "actions" }, copyButton("Copy payload", () => pretty(item.payload))),
      h("pre", { class: "payload", tabindex: "0" }, pretty(item.payload)),
    );
  }

  async function load() {
    try {
      render(await call("GET", channelPath(channel, "events", id), { signal }));
    } catch (error) {
      if (error.name === "AbortError") return;
      replace(content, errorBox(`Could not read webhook #${id}: ${error.words}`));
    }
  }

  replace(root, back, said, content);
  load();
}
