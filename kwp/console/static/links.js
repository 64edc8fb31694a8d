// Links inside the console: the URL's fragment names the view, never a token.

import { withQuery } from "./api.js";

export function channelLink(channel, view = "queue", query = {}) {
  return withQuery(`#/c/${encodeURIComponent(channel)}/${view}`, query);
}
