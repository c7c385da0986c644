// inspera-hooks inspect: the page. Plain DOM, no framework, no build step.
// Event data is only ever put into the page as text (textContent, text nodes, attributes set one
// by one): never as HTML, so a body holding <script> shows as the text it is.
"use strict";

const TOKEN = document.querySelector('meta[name="inspect-token"]').content;
const LIST_LIMIT = 500;
const HEX_LIMIT = 64 * 1024;
const PHRASES = {
  200: "OK", 201: "Created", 202: "Accepted", 204: "No Content", 301: "Moved", 302: "Found",
  400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
  409: "Conflict", 413: "Too Large", 422: "Unprocessable", 429: "Too Many Requests",
  500: "Server Error", 502: "Bad Gateway", 503: "Unavailable", 504: "Gateway Timeout",
};

const state = {
  info: null,
  rows: new Map(), // id -> row, for rows in the list
  selected: null, // id
  detail: null, // the selected row's detail
  stream: null,
  reloading: null, // a list fetch planned after a gap
  lastId: 0,
  bodyView: "text",
};

const $ = (id) => document.getElementById(id);

// -- building the DOM from text -----------------------------------------------------------------

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
  return node;
}

// -- formatting ---------------------------------------------------------------------------------

function timeOf(iso) {
  const when = new Date(iso);
  if (Number.isNaN(when.getTime())) return iso || "—";
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  const clock = `${pad(when.getHours())}:${pad(when.getMinutes())}:${pad(when.getSeconds())}.${pad(when.getMilliseconds(), 3)}`;
  const today = new Date().toDateString() === when.toDateString();
  return today ? clock : `${when.getFullYear()}-${pad(when.getMonth() + 1)}-${pad(when.getDate())} ${clock}`;
}

function timeCell(iso) {
  // The milliseconds apart, so that a narrow window can leave them out.
  const text = timeOf(iso);
  const dot = text.lastIndexOf(".");
  return dot < 0 ? [text] : [text.slice(0, dot), el("span", { class: "millis", text: text.slice(dot) })];
}

function statusPill(status) {
  if (status === null || status === undefined) return el("span", { class: "pill none", text: "—" });
  const phrase = PHRASES[status];
  return el("span", { class: `pill s${String(status)[0]}`, title: phrase || null, text: String(status) });
}

function signaturePill(signature) {
  return el("span", { class: `pill ${signature}`, text: signature });
}

function deliveryText(row) {
  const counted = (row.signature === "valid" || row.signature === "unchecked") && row.status !== 413;
  if (row.replayOf) return el("span", { text: "—" });
  if (!counted) return el("span", { title: "not counted: rejected or unread", text: "—" });
  if (row.delivery > 1) return el("span", { class: "retry", title: "Inspera sent this body again", text: `retry #${row.delivery}` });
  return el("span", { text: "#1" });
}

function appCell(forward) {
  if (!forward) return el("span", { class: "muted", text: "" });
  const latency = el("span", { class: "ms", text: `${Math.round(forward.latencyMs)} ms` });
  if (forward.status === null) return el("span", { title: forward.error || "", text: "" }, el("span", { class: "pill s5", text: "no answer" }), latency);
  return el("span", { title: forward.url }, statusPill(forward.status), latency);
}

function eventCell(row) {
  let name;
  if (row.event === null) name = el("span", { class: "none", text: "(not an event)" });
  else if (row.event === "verification") name = el("span", { class: "verification", text: "verification" });
  else name = el("span", { text: row.event });
  return [name, row.replayOf ? el("span", { class: "pill replay", title: `a replay of #${row.replayOf}`, text: "replay" }) : null];
}

// -- the list -----------------------------------------------------------------------------------

function filters() {
  const params = new URLSearchParams();
  for (const name of ["event", "signature", "status", "q"]) {
    const value = $(`f-${name}`).value.trim();
    if (value) params.set(name, value);
  }
  return params;
}

function rowNode(row, fresh) {
  const node = el("tr", {
    "data-id": row.id, tabindex: "-1", class: fresh ? "fresh" : null,
    "aria-selected": state.selected === row.id ? "true" : "false",
    onclick: () => select(row.id, true),
  },
  el("td", { class: "c-time", title: row.receivedAt }, timeCell(row.receivedAt)),
  el("td", { class: "c-event" }, eventCell(row)),
  el("td", { class: "c-object", text: row.contextObjectId === null ? "—" : String(row.contextObjectId) }),
  el("td", {}, signaturePill(row.signature)),
  el("td", { class: "c-delivery" }, deliveryText(row)),
  el("td", {}, statusPill(row.status)),
  el("td", { class: "c-app" }, appCell(row.forward)));
  return node;
}

async function loadList() {
  const params = filters();
  params.set("limit", String(LIST_LIMIT));
  const answer = await getJSON(`api/requests?${params}`);
  if (!answer) return;
  state.rows.clear();
  const body = clear($("rows"));
  for (const row of answer.requests) {
    state.rows.set(row.id, row);
    body.appendChild(rowNode(row, false));
  }
  state.lastId = answer.lastId;
  updateEvents(answer.events);
  updateCount(answer.total);
  openStream();
}

function addRow(row) {
  if (state.rows.has(row.id)) return;
  state.rows.set(row.id, row);
  const body = $("rows");
  body.insertBefore(rowNode(row, true), body.firstChild);
  while (body.children.length > LIST_LIMIT) {
    const last = body.lastChild;
    state.rows.delete(Number(last.dataset.id));
    body.removeChild(last);
  }
  if (row.event && ![...$("f-event").options].some((o) => o.value === row.event)) {
    updateEvents([...[...$("f-event").options].map((o) => o.value).filter(Boolean), row.event]);
  }
  updateCount(null);
}

function updateEvents(names) {
  const select = $("f-event");
  const current = select.value;
  const all = [...new Set([...names, current].filter(Boolean))].sort();
  clear(select).appendChild(el("option", { value: "", text: "All events" }));
  for (const name of all) select.appendChild(el("option", { value: name, text: name }));
  select.value = current;
}

function updateCount(total) {
  if (total !== null) state.total = total;
  else state.total = (state.total || 0) + 1;
  const shown = state.rows.size;
  const filtered = [...filters().keys()].length > 0;
  $("count").textContent = filtered ? `${shown} matching` : `${shown} request${shown === 1 ? "" : "s"}`;
  $("empty").hidden = shown > 0;
}

function openStream() {
  if (state.stream) state.stream.close();
  const params = filters();
  params.set("after", String(state.lastId));
  const stream = new EventSource(`api/stream?${params}`);
  state.stream = stream;
  stream.addEventListener("open", () => setLive(true));
  stream.addEventListener("error", () => setLive(false));
  stream.addEventListener("request", (event) => {
    const row = JSON.parse(event.data);
    state.lastId = Math.max(state.lastId, row.id);
    addRow(row);
  });
  // More rows came than a page can show live: the list is fetched again, at most once a second.
  stream.addEventListener("gap", () => {
    if (!state.reloading) state.reloading = setTimeout(() => { state.reloading = null; loadList(); }, 1000);
  });
}

function setLive(on) {
  $("live").className = `live ${on ? "on" : "off"}`;
  $("live-text").textContent = on ? "live" : "reconnecting…";
}

// -- selection and keys -------------------------------------------------------------------------

function rowNodes() {
  return [...$("rows").children];
}

async function select(id, focus) {
  state.selected = id;
  for (const node of rowNodes()) {
    const on = Number(node.dataset.id) === id;
    node.setAttribute("aria-selected", on ? "true" : "false");
    node.tabIndex = on ? 0 : -1;
    if (on && focus) node.focus({ preventScroll: false });
  }
  const detail = await getJSON(`api/requests/${id}`);
  if (!detail || state.selected !== id) return;
  state.detail = detail;
  renderDetail(detail);
}

function closeDetail() {
  const id = state.selected;
  state.selected = null;
  state.detail = null;
  $("detail").hidden = true;
  $("panes").classList.remove("with-detail");
  const node = rowNodes().find((n) => Number(n.dataset.id) === id);
  for (const n of rowNodes()) n.setAttribute("aria-selected", "false");
  if (node) node.focus();
}

function move(step) {
  const nodes = rowNodes();
  if (!nodes.length) return;
  let index = nodes.findIndex((n) => Number(n.dataset.id) === state.selected);
  index = index < 0 ? 0 : Math.min(nodes.length - 1, Math.max(0, index + step));
  const id = Number(nodes[index].dataset.id);
  nodes[index].scrollIntoView({ block: "nearest" });
  select(id, true);
}

document.addEventListener("keydown", (event) => {
  const typing = ["INPUT", "TEXTAREA", "SELECT"].includes(document.activeElement.tagName);
  if (event.key === "Escape") {
    if (typing) document.activeElement.blur();
    else if (state.selected !== null) closeDetail();
    return;
  }
  if (typing || event.ctrlKey || event.metaKey || event.altKey) return;
  if (event.key === "/") { event.preventDefault(); $("f-q").focus(); }
  else if (event.key === "ArrowDown" || event.key === "j") { event.preventDefault(); move(1); }
  else if (event.key === "ArrowUp" || event.key === "k") { event.preventDefault(); move(-1); }
  else if (event.key === "Enter" && document.activeElement.dataset && document.activeElement.dataset.id) {
    select(Number(document.activeElement.dataset.id), true);
  }
});

// -- the detail ---------------------------------------------------------------------------------

function renderDetail(d) {
  const pane = clear($("detail"));
  pane.hidden = false;
  $("panes").classList.add("with-detail");
  append(pane, [
    detailHead(d),
    diagnosisBlock(d),
    actionsBlock(d),
    el("div", { id: "replay-result" }),
    el("div", { id: "edit-area" }),
    el("div", { id: "curl-area" }),
    bodyBlock(d),
    payloadBlock(d),
    headersBlock("Request headers", d.requestHeaders),
    d.replayOf ? null : answerBlock("Our answer", d.answer, d.status, d.note),
    appBlock(d.forward),
  ]);
}

function detailHead(d) {
  const title = d.event === null ? "(not an event)" : d.event;
  return el("div", { class: "d-head" },
    el("h2", { class: "d-title" },
      el("button", { class: "icon-button back", type: "button", title: "Back to the list", "aria-label": "Back to the list", onclick: closeDetail, text: "←" }),
      el("span", { class: "id", text: `#${d.id}` }),
      el("span", { text: title }),
      d.replayOf ? el("span", { class: "pill replay", text: `replay of #${d.replayOf}` }) : null,
      el("span", { class: "spacer" }),
      el("button", { class: "icon-button", type: "button", title: "Close (Esc)", "aria-label": "Close", onclick: closeDetail, text: "×" })),
    el("p", { class: "d-meta" },
      signaturePill(d.signature), statusPill(d.status),
      el("span", { text: timeOf(d.receivedAt) }),
      el("span", { text: `· object ${d.contextObjectId === null ? "—" : d.contextObjectId}` }),
      el("span", { text: "· delivery" }), deliveryText(d),
      el("span", { text: `· ${d.size} bytes` })));
}

function diagnosisBlock(d) {
  if (d.signature !== "invalid" && d.signature !== "missing") return null;
  if (!d.diagnosis) {
    return el("div", { class: "callout bad", role: "note" },
      el("h2", { text: `Signature ${d.signature}` }),
      el("p", { text: d.note || "the signature could not be checked" }),
      state.info && !state.info.signing ? el("p", { text: "Start with the listener's secret to see why." }) : null);
  }
  return el("div", { class: "callout bad", role: "note", id: "diagnosis" },
    el("h2", { text: `Why the signature is ${d.signature}` }),
    el("p", { class: "reason", text: d.diagnosis.reason || "the signature does not match" }),
    d.diagnosis.notes.length ? el("ul", { class: "notes" }, d.diagnosis.notes.map((n) => el("li", { text: n }))) : null);
}

function actionsBlock(d) {
  const target = el("input", {
    id: "replay-to", type: "url", "aria-label": "Replay to this URL", spellcheck: "false",
    placeholder: d.replayTarget || "http://127.0.0.1:5000/hooks",
  });
  if (d.replayTarget) target.value = d.replayTarget;
  return el("div", { class: "actions" },
    target,
    el("button", { class: "btn primary", type: "button", id: "replay", onclick: () => replay(d, null), text: "Replay" }),
    el("button", { class: "btn", type: "button", id: "edit", onclick: () => openEditor(d), text: "Edit and replay" }),
    el("button", { class: "btn", type: "button", id: "curl", onclick: () => copyCurl(d), text: "Copy as curl" }),
    el("a", { class: "btn", id: "download", href: `api/requests/${d.id}/record`, download: `inspera-request-${d.id}.jsonl`, text: "Download" }));
}

function bodyText(d) {
  return d.body === undefined || d.body === null ? null : d.body;
}

function bytesOf(d) {
  const raw = atob(d.bodyBase64);
  const bytes = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
  return bytes;
}

function hexDump(bytes) {
  const lines = [];
  const shown = Math.min(bytes.length, HEX_LIMIT);
  for (let at = 0; at < shown; at += 16) {
    const chunk = bytes.slice(at, Math.min(at + 16, shown));
    const hex = [...chunk].map((b) => b.toString(16).padStart(2, "0")).join(" ");
    const ascii = [...chunk].map((b) => (b >= 32 && b < 127 ? String.fromCharCode(b) : ".")).join("");
    lines.push(`${at.toString(16).padStart(8, "0")}  ${hex.padEnd(47)}  ${ascii}`);
  }
  if (bytes.length > shown) lines.push(`… ${bytes.length - shown} more bytes`);
  return lines.join("\n");
}

function bodyBlock(d) {
  const text = bodyText(d);
  const views = text === null ? ["hex", "base64"] : ["text", "hex", "base64"];
  if (!views.includes(state.bodyView)) state.bodyView = views[0];
  const pre = el("pre", { id: "raw-body" });
  const tabs = el("span", { class: "tabs", role: "group", "aria-label": "Show the body as" });
  const show = (view) => {
    state.bodyView = view;
    for (const b of tabs.children) b.setAttribute("aria-pressed", b.dataset.view === view ? "true" : "false");
    pre.className = view === "hex" ? "hex" : "";
    clear(pre);
    if (view === "text") showText(pre, text);
    else if (view === "hex") pre.textContent = hexDump(bytesOf(d));
    else pre.textContent = d.bodyBase64;
  };
  for (const view of views) {
    tabs.appendChild(el("button", { type: "button", "data-view": view, onclick: () => show(view), text: view }));
  }
  show(state.bodyView);
  const kind = text === null ? "binary: not UTF-8" : "exactly as received";
  return el("section", { class: "block" },
    el("h2", {}, "Raw body", el("span", { class: "aside", text: `${d.size} bytes, ${kind}` }), tabs),
    pre);
}

function showText(pre, text) {
  // Line ends that matter to a signature are made visible: a trailing newline, CRs.
  const parts = text.split(/(\r\n|\n|\r)/);
  for (let i = 0; i < parts.length; i++) {
    const part = parts[i];
    if (part === "\r\n" || part === "\r" || part === "\n") {
      const last = i === parts.length - 2 && parts[parts.length - 1] === "";
      if (part !== "\n" || last) pre.appendChild(el("span", { class: "eol", title: "line end", text: part === "\n" ? "↵" : part === "\r\n" ? "␍↵" : "␍" }));
      pre.appendChild(document.createTextNode("\n"));
    } else {
      pre.appendChild(document.createTextNode(part));
    }
  }
}

function payloadBlock(d) {
  if (!d.payload) return null;
  if (d.format === "java-map") {
    return el("section", { class: "block" },
      el("h2", {}, "Parsed payload", el("span", { class: "aside", text: "Java map text (older documentation)" })),
      keyValueTable(Object.entries(d.payload).map(([k, v]) => [k, v === null ? "null" : String(v)])));
  }
  const pre = el("pre", { id: "payload" });
  jsonNodes(pre, d.payload, "");
  return el("section", { class: "block" },
    el("h2", {}, "Parsed payload", el("span", { class: "aside", text: "JSON" })), pre);
}

function jsonNodes(into, value, indent) {
  const span = (cls, text) => into.appendChild(el("span", { class: cls, text }));
  if (value === null || typeof value === "boolean") span("j-lit", String(value));
  else if (typeof value === "number") span("j-num", String(value));
  else if (typeof value === "string") span("j-str", JSON.stringify(value));
  else if (Array.isArray(value)) {
    if (!value.length) { span("j-punct", "[]"); return; }
    span("j-punct", "[");
    value.forEach((item, i) => {
      into.appendChild(document.createTextNode(`\n${indent}  `));
      jsonNodes(into, item, `${indent}  `);
      if (i < value.length - 1) span("j-punct", ",");
    });
    into.appendChild(document.createTextNode(`\n${indent}`));
    span("j-punct", "]");
  } else {
    const entries = Object.entries(value);
    if (!entries.length) { span("j-punct", "{}"); return; }
    span("j-punct", "{");
    entries.forEach(([key, item], i) => {
      into.appendChild(document.createTextNode(`\n${indent}  `));
      span("j-key", JSON.stringify(key));
      span("j-punct", ": ");
      jsonNodes(into, item, `${indent}  `);
      if (i < entries.length - 1) span("j-punct", ",");
    });
    into.appendChild(document.createTextNode(`\n${indent}`));
    span("j-punct", "}");
  }
}

function keyValueTable(pairs, highlight) {
  return el("table", { class: "kv" }, el("tbody", {}, pairs.map(([k, v]) =>
    el("tr", { class: highlight && k.toLowerCase() === highlight ? "signature" : null },
      el("th", { scope: "row", text: k }), el("td", { text: v })))));
}

function headersBlock(title, pairs) {
  if (!pairs || !pairs.length) return null;
  return el("section", { class: "block" }, el("h2", { text: title }), keyValueTable(pairs, "x-inspera-signature"));
}

function answerBody(answer) {
  if (answer.body !== null && answer.body !== undefined) return answer.body ? el("pre", { text: answer.body }) : null;
  return el("pre", { class: "hex", text: hexDump(bytesOf(answer)) });
}

function answerBlock(title, answer, status, note) {
  if (!answer) {
    return el("section", { class: "block" }, el("h2", { text: title }),
      el("p", {}, statusPill(status), " ", el("span", { class: "muted", text: note || "(from a record file: headers and body not kept)" })));
  }
  return el("section", { class: "block" },
    el("h2", {}, title, el("span", { class: "aside" }, statusPill(answer.status), ` ${PHRASES[answer.status] || ""}`)),
    answerBody(answer),
    answer.headers.length ? el("details", {}, el("summary", { class: "muted", text: "headers" }), keyValueTable(answer.headers)) : null);
}

function appBlock(forward) {
  if (!forward) return null;
  const head = el("h2", {}, "The app's answer", el("span", { class: "aside", text: forward.url }));
  if (forward.status === null) {
    return el("section", { class: "block" }, head,
      el("p", {}, el("span", { class: "pill s5", text: "no answer" }), " ", el("span", { text: `${forward.error || ""} (${Math.round(forward.latencyMs)} ms)` })));
  }
  return el("section", { class: "block", id: "app-answer" }, head,
    el("p", {}, statusPill(forward.status), ` ${PHRASES[forward.status] || ""} in ${forward.latencyMs.toFixed(1)} ms`),
    forward.headers && forward.headers.length ? keyValueTable(forward.headers) : null,
    forward.body || forward.bodyBase64 ? el("div", { class: "spaced" }, answerBody(forward)) : null);
}

// -- actions ------------------------------------------------------------------------------------

async function replay(d, body) {
  const to = $("replay-to").value.trim() || null;
  const buttons = [...document.querySelectorAll(".actions .btn, .edit .btn")];
  buttons.forEach((b) => { b.disabled = true; });
  const box = clear($("replay-result"));
  box.appendChild(el("div", { class: "callout neutral", text: `Replaying #${d.id}${to ? ` to ${to}` : ""}…` }));
  try {
    const answer = await postJSON(`api/requests/${d.id}/replay`, { to, body });
    clear(box).appendChild(replayResult(answer));
  } finally {
    buttons.forEach((b) => { b.disabled = false; });
  }
}

function replayResult(answer) {
  if (answer.error && answer.status === undefined) {
    return el("div", { class: "callout bad", role: "status", id: "replay-outcome" }, el("h2", { text: "Not replayed" }), el("p", { text: answer.error }));
  }
  const ok = answer.status !== null && answer.status >= 200 && answer.status < 300;
  const headline = answer.status === null
    ? `No answer: ${answer.error}`
    : `${answer.status} ${PHRASES[answer.status] || ""} in ${answer.latencyMs.toFixed(1)} ms`;
  return el("div", { class: `callout ${ok ? "good" : "bad"}`, role: "status", id: "replay-outcome" },
    el("h2", {}, `Replayed: ${headline} `, el("a", { href: "#", onclick: (e) => { e.preventDefault(); select(answer.id, true); }, text: `(row #${answer.id})` })),
    answer.body ? el("pre", { text: answer.body }) : null);
}

function openEditor(d) {
  const area = clear($("edit-area"));
  const text = bodyText(d);
  const editor = el("textarea", { id: "edit-body", spellcheck: "false", "aria-label": "The body to send" });
  editor.value = text === null ? "" : text;
  append(area, [el("section", { class: "block edit" },
    el("h2", { text: "Edit and replay" }),
    editor,
    el("div", { class: "row" },
      el("button", { class: "btn primary", type: "button", id: "send-edited", onclick: () => replay(d, editor.value), text: "Send edited body" }),
      el("button", { class: "btn", type: "button", onclick: () => clear(area), text: "Cancel" }),
      el("span", { class: "hint", text: state.info && state.info.signing ? "re-signed with the listener's secret" : "sent unsigned (no secret given)" })))]);
  editor.focus();
}

async function copyCurl(d) {
  const to = $("replay-to").value.trim();
  const params = new URLSearchParams();
  if (to) params.set("to", to);
  const answer = await getJSON(`api/requests/${d.id}/curl?${params}`);
  if (!answer) return;
  const area = clear($("curl-area"));
  append(area, [el("section", { class: "block" },
    el("h2", {}, "curl", el("span", { class: "aside", text: "the exact body and its signature; never the secret" })),
    el("pre", { class: "curl", id: "curl-command", text: answer.command }))]);
  try {
    await navigator.clipboard.writeText(answer.command);
    toast("Copied to the clipboard");
  } catch (error) {
    toast("Select the command to copy it");
  }
}

function toast(text) {
  const node = el("div", { class: "toast", role: "status", text });
  document.body.appendChild(node);
  setTimeout(() => node.remove(), 1800);
}

// -- talking to the server ----------------------------------------------------------------------

async function getJSON(url) {
  try {
    const answer = await fetch(url, { headers: { Accept: "application/json" } });
    const data = await answer.json();
    if (!answer.ok) { toast(data.error || `error ${answer.status}`); return null; }
    return data;
  } catch (error) {
    toast(`cannot reach the inspector: ${error.message}`);
    return null;
  }
}

async function postJSON(url, data) {
  try {
    const answer = await fetch(url, {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-Inspect-Token": TOKEN },
      body: JSON.stringify(data),
    });
    const result = await answer.json();
    return answer.ok ? result : { error: result.error || `error ${answer.status}` };
  } catch (error) {
    return { error: `cannot reach the inspector: ${error.message}` };
  }
}

async function start() {
  state.info = await getJSON("api/info");
  if (state.info) {
    const source = $("source");
    const what = state.info.mode === "listen" ? "listening on " : "following ";
    append(source, [what, el("code", { text: state.info.source })]);
    const targets = Object.entries(state.info.targets);
    if (targets.length) append(source, [" → ", el("code", { text: targets.map(([e, url]) => (e === "*" ? url : `${e}: ${url}`)).join(", ") })]);
    const hint = $("empty-hint");
    if (state.info.mode === "listen") {
      append(clear(hint), ["They appear here as they arrive, without a reload. Try:", el("br"),
        el("code", { text: `inspera-hooks trigger confirm_final_grades --to ${state.info.source}` })]);
    }
  }
  let typing = null;
  $("filters").addEventListener("submit", (event) => event.preventDefault());
  for (const id of ["f-event", "f-signature", "f-status"]) $(id).addEventListener("change", loadList);
  $("f-q").addEventListener("input", () => { clearTimeout(typing); typing = setTimeout(loadList, 200); });
  await loadList();
}

start();
