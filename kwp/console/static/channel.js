// A channel's page: its name, its consumers, and a tab per view.

import { consumerQuery } from "./api.js";
import { h, replace } from "./dom.js";
import { channelLink } from "./links.js";
import * as queue from "./queue.js";
import * as events from "./events.js";
import * as tail from "./tail.js";
import * as debug from "./debug.js";

const TABS = [
  ["queue", "Queue", queue],
  ["events", "Events", events],
  ["tail", "Live tail", tail],
  ["debug", "Debug", debug],
];

export function show(root, { channel, rest, query }, app, signal) {
  const [tab = "queue", ...more] = rest;
  const info = app.channels.find(channel);
  const consumers = info?.consumers ?? [];
  // A consumer the URL names but the token does not see is asked all the
  // same: kwp's answer tells why (403, 404), as for a channel.
  const asked = query.get("consumer");
  const consumer = asked === null ? consumers[0] : consumers.find((c) => c.name === asked) ?? { name: asked, kind: "pull" };
  const keep = consumerQuery(info, consumer?.name);
  const found = TABS.find(([name]) => name === tab);

  const nav = h(
    "nav",
    { class: "tabs", "aria-label": "Views of this channel" },
    TABS.map(([name, label]) =>
      h("a", { href: channelLink(channel, name, keep), "aria-current": name === tab ? "page" : null }, label),
    ),
  );
  const chooser =
    info?.named_consumers || consumers.length > 1
      ? h(
          "p",
          null,
          "Consumer: ",
          consumers.map((c) => [
            h(
              "a",
              { href: channelLink(channel, tab, consumerQuery(info, c.name)), "aria-current": c === consumer ? "true" : null },
              c.name,
              ` (${c.kind}${c.removed ? ", removed" : ""})`,
            ),
            " ",
          ]),
        )
      : null;
  const section = h("section", { "aria-label": found ? found[1] : "View" });
  replace(
    root,
    h("p", null, h("a", { href: "#/" }, "← Channels")),
    h("h1", null, channel, info?.provider ? [" ", h("span", { class: "badge" }, info.provider)] : null),
    info ? null : h("p", { class: "notice" }, "This channel is not among those this token reaches; kwp's answer follows."),
    info && !consumers.includes(consumer)
      ? h("p", { class: "notice" }, `Consumer ${asked} is not among those this token reaches; kwp's answer follows.`)
      : null,
    chooser,
    nav,
    section,
  );
  if (!found) {
    section.append(h("p", { class: "error", role: "alert" }, `The console has no view "${tab}" for a channel.`));
    return;
  }
  found[2].show(section, { channel, info, consumer, query, rest: more }, app, signal);
}
