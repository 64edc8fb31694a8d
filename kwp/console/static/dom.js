// Building the page: elements are made with h() and text is always set as
// text, never parsed as HTML, because payloads and headers come from senders.

const PROPERTIES = new Set(["value", "checked", "disabled", "hidden", "selected", "open"]);

export function h(tag, props, ...children) {
  const element = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") element.className = value;
    else if (key.startsWith("on")) element.addEventListener(key.slice(2), value);
    else if (PROPERTIES.has(key)) element[key] = value;
    else element.setAttribute(key, value === true ? "" : String(value));
  }
  append(element, children);
  return element;
}

function append(element, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    element.append(child instanceof Node ? child : String(child));
  }
  return element;
}

export function replace(element, ...children) {
  element.replaceChildren();
  return append(element, children);
}

/** A local date and time for unix seconds. */
export function when(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  return new Date(seconds * 1000).toLocaleString();
}

/** How long ago unix seconds were, in words: "12 s", "3 min", "2 h", "4 d". */
function age(seconds, now = Date.now() / 1000) {
  if (seconds === null || seconds === undefined) return "—";
  const d = Math.max(0, now - seconds);
  if (d < 60) return `${Math.floor(d)} s`;
  if (d < 3600) return `${Math.floor(d / 60)} min`;
  if (d < 86400) return `${Math.floor(d / 3600)} h`;
  return `${Math.floor(d / 86400)} d`;
}

/** A <time> element showing how long ago, with the full date as its title. */
export function timeAgo(seconds, suffix = " ago") {
  if (seconds === null || seconds === undefined) return "—";
  return h(
    "time",
    { datetime: new Date(seconds * 1000).toISOString(), title: when(seconds) },
    age(seconds) + suffix,
  );
}

export function pretty(value) {
  return value === undefined ? "" : JSON.stringify(value, null, 2);
}

/** A two-column table of a headers object. */
export function headersTable(headers) {
  const names = Object.keys(headers || {}).sort();
  if (!names.length) return h("p", { class: "notice" }, "No headers.");
  return h(
    "table",
    { class: "kv" },
    h("tbody", null, names.map((name) => h("tr", null, h("td", null, name), h("td", null, headers[name])))),
  );
}

/** Put text on the clipboard; resolves with whether it worked. */
async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    // No clipboard API (a page served over plain HTTP from another host).
    const area = h("textarea", { readonly: true, class: "offscreen" });
    area.value = text;
    document.body.append(area);
    area.select();
    let copied = false;
    try {
      copied = document.execCommand("copy");
    } catch {
      copied = false;
    }
    area.remove();
    return copied;
  }
}

/** A button that copies text() and says so next to itself. */
export function copyButton(label, text) {
  const said = h("span", { class: "status", "aria-live": "polite" });
  const button = h(
    "button",
    {
      type: "button",
      class: "quiet",
      onclick: async () => {
        said.textContent = (await copyText(text())) ? "Copied." : "Could not copy: select the text and copy it by hand.";
      },
    },
    label,
  );
  return [button, said];
}

/** An element saying what went wrong, in words. */
export function errorBox(message) {
  return h("p", { class: "error", role: "alert" }, message);
}

const dialog = () => document.getElementById("confirm");

/** Ask before an action that cannot be undone; resolves with the answer. */
export function confirmAction(question, action) {
  const box = dialog();
  document.getElementById("confirm-text").textContent = question;
  document.getElementById("confirm-ok").textContent = action;
  box.returnValue = "";
  return new Promise((resolve) => {
    box.addEventListener("close", () => resolve(box.returnValue === "ok"), { once: true });
    box.showModal();
  });
}
