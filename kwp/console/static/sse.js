// Server-Sent Events read with fetch(): EventSource cannot send an
// Authorization header, and the token must not go into the URL.  The parser
// follows the HTML standard's event stream interpretation.

import { open } from "./api.js";

export class SSEParser {
  /** onEvent({type, data, id}) for each event; onComment(text) for each comment line. */
  constructor(onEvent, onComment = () => {}, lastEventId = "") {
    this.onEvent = onEvent;
    this.onComment = onComment;
    this.lastEventId = lastEventId;
    this.retry = null;
    this._buffer = "";
    this._data = [];
    this._type = "";
    this._id = lastEventId;
  }

  /** Feed decoded text; lines end with CRLF, LF or CR. */
  push(text) {
    this._buffer += text;
    let start = 0;
    for (let i = 0; i < this._buffer.length; i++) {
      const c = this._buffer[i];
      if (c !== "\n" && c !== "\r") continue;
      // A CR at the end of what arrived may be the first half of a CRLF.
      if (c === "\r" && i + 1 === this._buffer.length) break;
      this._line(this._buffer.slice(start, i));
      if (c === "\r" && this._buffer[i + 1] === "\n") i++;
      start = i + 1;
    }
    this._buffer = this._buffer.slice(start);
  }

  _line(line) {
    if (line === "") return this._dispatch();
    if (line.startsWith(":")) return this.onComment(line.slice(1).trimStart());
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") this._data.push(value);
    else if (field === "event") this._type = value;
    else if (field === "id" && !value.includes("\0")) this._id = value;
    else if (field === "retry" && /^\d+$/.test(value)) this.retry = Number(value);
  }

  _dispatch() {
    this.lastEventId = this._id;
    const data = this._data;
    const type = this._type || "message";
    this._data = [];
    this._type = "";
    if (data.length) this.onEvent({ type, data: data.join("\n"), id: this.lastEventId });
  }
}

/**
 * Read one stream of path until it ends, sending lastEventId as
 * Last-Event-ID so that the server starts after it; onId(id) is told each
 * new last event id, also one sent without data (kwp's first line), so that
 * a stream that drops before any webhook came resumes from where it began.
 * Rejects with an ApiError when kwp refuses the stream.
 */
export async function readStream(path, { lastEventId = "", signal, onOpen, onEvent, onId, onRetry }) {
  const headers = { Accept: "text/event-stream" };
  if (lastEventId) headers["Last-Event-ID"] = lastEventId;
  const response = await open(path, { headers, signal });
  const type = response.headers.get("content-type") || "";
  if (!type.startsWith("text/event-stream")) {
    throw new Error(`GET ${path} answered ${type || "no content type"}, not an event stream`);
  }
  onOpen();
  const parser = new SSEParser(onEvent, undefined, lastEventId);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      parser.push(value);
      if (parser.lastEventId !== lastEventId) {
        lastEventId = parser.lastEventId;
        onId(lastEventId);
      }
      if (parser.retry !== null) onRetry(parser.retry);
    }
  } finally {
    reader.releaseLock();
  }
}
