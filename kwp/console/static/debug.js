// Debug: sign a payload with the channel's secret (POST .../sign) and send it
// through the channel's own receive path (POST .../test-send).

import { call, channelPath } from "./api.js";
import { errorBox, h, headersTable, pretty, replace } from "./dom.js";

const SAMPLE = '{\n  "action": "opened",\n  "test": true\n}';

export function show(root, { channel }, app, signal) {
  const payload = h("textarea", { id: "debug-payload", rows: "10", spellcheck: "false" });
  payload.value = SAMPLE;
  const secret = h("input", { id: "debug-secret", type: "password", autocomplete: "off" });
  const answer = h("div", { "aria-live": "polite", id: "debug-answer" });

  async function sign() {
    try {
      const signed = await call("POST", channelPath(channel, "sign"), { body: payload.value, signal });
      replace(
        answer,
        h("h2", null, "Signature"),
        h(
          "table",
          { class: "kv" },
          h(
            "tbody",
            null,
            h("tr", null, h("td", null, "header"), h("td", null, signed.header_name)),
            h("tr", null, h("td", null, "value"), h("td", { class: "header-value" }, signed.header_value)),
            h("tr", null, h("td", null, "signature"), h("td", null, signed.signature)),
          ),
        ),
        signed.headers && Object.keys(signed.headers).length ? [h("h2", null, "Every header a sender adds"), headersTable(signed.headers)] : null,
      );
    } catch (error) {
      if (error.name !== "AbortError") replace(answer, errorBox(`Could not sign: ${error.words}`));
    }
  }

  async function testSend() {
    let parsed;
    try {
      parsed = JSON.parse(payload.value);
    } catch (error) {
      replace(answer, errorBox(`The payload is not valid JSON: ${error.message}`));
      return;
    }
    const json = { payload: parsed };
    if (secret.value) json.secret = secret.value;
    try {
      const received = await call("POST", channelPath(channel, "test-send"), { json, signal, receive: true });
      replace(answer, h("h2", null, "kwp answered"), h("p", { class: "success" }, "200: the receive path accepted it."), h("pre", { class: "answer" }, pretty(received)));
      app.channels.refresh();
    } catch (error) {
      if (error.name !== "AbortError") {
        const words = error.status ? `Refused: ${error.detail} (${error.status} ${error.code}).` : error.words;
        replace(answer, h("h2", null, "kwp answered"), errorBox(words));
      }
    }
  }

  replace(
    root,
    h(
      "form",
      { class: "panel", onsubmit: (event) => event.preventDefault() },
      h("label", { for: "debug-payload" }, "Payload (JSON)"),
      payload,
      h("label", { for: "debug-secret" }, "Secret for test-send (optional: the channel's own secret when empty)"),
      secret,
      h(
        "div",
        { class: "actions" },
        h("button", { type: "button", onclick: sign }, "Sign"),
        h("button", { type: "button", onclick: testSend }, "Test-send"),
      ),
      h("p", { class: "status" }, "Sign shows the signature the channel's senders put on this exact text. Test-send runs the payload through the channel's receive path, as its sender would send it; a payload that passes is stored like any other webhook."),
    ),
    answer,
  );
}
