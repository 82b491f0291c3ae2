// The chat pane: one <article> per message, keyed by the server's message id.
//
// Invariant: every message element has data-role and data-id, its words live in exactly one child
// with class "text" (deltas are appended there, never elsewhere), and an assistant message always
// carries data-state (streaming, done, interrupted or error).

const chat = document.getElementById("chat");
const byId = new Map();
const pendingMetrics = new Map();
const listeners = new Set();

const WHO = { user: "You", assistant: "Parley", system: "System" };
const METRIC_LABELS = [
  ["asr", "asr", "speech recognition: end of recording to transcript"],
  ["llm_ttft", "first token", "request to first text from the model"],
  ["first_sentence", "first sentence", "request to the first sentence handed to speech"],
  ["tts_ttfb", "tts", "sentence to its first audio packet"],
  ["voice_to_voice", "voice", "end of your recording to the first spoken audio"],
];

/** Call fn() whenever the set of streaming assistant messages may have changed. */
export function onStreamingChange(fn) {
  listeners.add(fn);
}

/** True while any assistant message is still streaming. */
export function isStreaming() {
  return chat.querySelector('.msg[data-role="assistant"][data-state="streaming"]') !== null;
}

/** Replace the whole chat with the server's history (on every welcome). */
export function renderHistory(history) {
  byId.clear();
  pendingMetrics.clear();
  chat.replaceChildren();
  for (const m of history || []) {
    const el = createMessage(String(m.id), m.role);
    fill(el, m, "done");
  }
  scrollToBottom();
  changed();
}

/** Create the message for m.id, or replace its text and state if it exists. */
export function upsertMessage(m) {
  keepScroll(m.role === "user", () => {
    const el = byId.get(String(m.id)) || createMessage(String(m.id), m.role);
    if (m.role && el.dataset.role !== m.role) el.dataset.role = m.role;
    fill(el, m, "streaming");
  });
  changed();
}

/** Append a streamed piece of an assistant message. */
export function appendDelta({ id, text }) {
  if (!text) return;
  keepScroll(false, () => {
    let el = byId.get(String(id));
    if (!el) {
      el = createMessage(String(id), "assistant");
      el.dataset.state = "streaming";
    }
    el.querySelector(".text").append(text);
  });
  changed();
}

/**
 * Apply a state change; an error text, when given, is shown inside the message. An interruption
 * brings the words the user heard (`text`) and the rest (`unspoken`), shown apart.
 */
export function setState({ id, state, error, text, unspoken }) {
  let el = byId.get(String(id));
  // A turn can fail before its first word; its error still deserves a place in the chat.
  if (!el && state !== "error" && !error) return;
  keepScroll(false, () => {
    el ||= createMessage(String(id), "assistant");
    el.dataset.state = state;
    if (typeof text === "string") el.querySelector(".text").textContent = text;
    if (typeof unspoken === "string") showUnspoken(el, unspoken);
    showError(el, state, error);
  });
  changed();
}

/** Show the latency line for a turn under its assistant message. */
export function setMetrics(m) {
  const el = byId.get(String(m.id));
  if (!el) {
    pendingMetrics.set(String(m.id), m);
    return;
  }
  const parts = [];
  const details = [];
  for (const [key, label, meaning] of METRIC_LABELS) {
    const v = m[key];
    if (typeof v !== "number" || !Number.isFinite(v)) continue;
    parts.push(`${label} ${v.toFixed(2)} s`);
    details.push(`${label}: ${meaning}`);
  }
  let line = el.querySelector(".metrics");
  if (!parts.length) {
    line?.remove();
    return;
  }
  keepScroll(false, () => {
    if (!line) {
      line = document.createElement("div");
      line.className = "metrics";
      el.append(line);
    }
    line.textContent = parts.join(" · ");
    line.title = details.join("\n");
  });
}

function createMessage(id, role) {
  const el = document.createElement("article");
  el.className = "msg";
  el.dataset.role = role || "assistant";
  el.dataset.id = id;
  const who = document.createElement("div");
  who.className = "who";
  who.textContent = WHO[el.dataset.role] || el.dataset.role;
  const text = document.createElement("div");
  text.className = "text";
  el.append(who, text);
  chat.append(el);
  byId.set(id, el);
  const metrics = pendingMetrics.get(id);
  if (metrics) {
    pendingMetrics.delete(id);
    queueMicrotask(() => setMetrics(metrics));
  }
  return el;
}

function fill(el, m, defaultState) {
  el.querySelector(".text").textContent = m.text ?? "";
  showUnspoken(el, m.unspoken || "");
  const state = m.state || el.dataset.state || (el.dataset.role === "assistant" ? defaultState : "");
  if (state) el.dataset.state = state;
  showError(el, state, m.error);
}

function showUnspoken(el, words) {
  let box = el.querySelector(".unspoken");
  if (!words) {
    box?.remove();
    return;
  }
  if (!box) {
    box = document.createElement("div");
    box.className = "unspoken";
    box.title = "Interrupted before Parley said this; it is not part of the conversation";
    el.querySelector(".text").after(box);
  }
  box.textContent = words;
}

function showError(el, state, error) {
  let box = el.querySelector(".error");
  if (state !== "error" && !error) {
    box?.remove();
    return;
  }
  if (!box) {
    box = document.createElement("div");
    box.className = "error";
    el.querySelector(".text").after(box);
  }
  box.textContent = error || "Something went wrong while answering.";
}

function keepScroll(force, mutate) {
  const nearBottom = chat.scrollHeight - chat.scrollTop - chat.clientHeight < 80;
  mutate();
  if (force || nearBottom) scrollToBottom();
}

function scrollToBottom() {
  chat.scrollTop = chat.scrollHeight;
}

function changed() {
  for (const fn of listeners) fn();
}
