// The chat pane: one <article> per message, keyed by the server's message id.
//
// Invariants: every message element has data-role and data-id; its words live in exactly one child
// with class "text", rebuilt from the message's source (kept in `sources`: Markdown for Parley's
// answers, plain text for the user's) whenever that changes, so the screen always shows the whole
// answer rendered, never fragments. An assistant
// message always carries data-state (streaming, done, paused, interrupted or error; paused: the
// user spoke over it and it waits to hear whether that was a backchannel). The log itself is
// not a live region: whole sentences and messages are announced through #announcer instead.

import { isHtmlPage, plainText, renderMarkdown } from "./markdown.js";
import { clearSpoken, markSpoken } from "./spoken.js";

const chat = document.getElementById("chat");
const announcer = document.getElementById("announcer");
const byId = new Map();
const sources = new Map();
const rendered = new Map(); // id -> the source its element was last built from
const announced = new Map();
const dirty = new Set();
const pendingMetrics = new Map();
const listeners = new Set();
let stickToBottom = true;
let spoken = null; // { id, blocks: Element[] }

const WHO = { user: "You", assistant: "Parley", system: "Parley (note)" };
// The stage definitions live in parley/metrics.py; these say the same in a line.
const METRIC_LABELS = [
  ["asr", "asr", "speech recognition: the call whose transcript was used (it may have run while you paused)"],
  ["llm_ttft", "first token", "request to first text from the model"],
  ["first_sentence", "first sentence", "request to the first sentence handed to speech"],
  ["tts_ttfb", "tts", "sentence to its first audio packet"],
  ["end_of_turn", "end of turn", "hands-free: your last word reaching the server to Parley deciding you had finished"],
  ["turn_to_voice", "reply", "the server knowing your turn was over (key released, end of turn, message sent) to the first spoken audio leaving it"],
  ["voice_to_voice", "voice", "you starting to wait (key released, last word, message sent) to the first spoken audio leaving the server"],
];
const SENTENCE_END = /[.!?…:;](?=\s|$)|\n/g;
const MAX_ANNOUNCEMENTS = 6;

/** Call fn() whenever the set of streaming assistant messages may have changed. */
export function onStreamingChange(fn) {
  listeners.add(fn);
}

/** True while any assistant message is still streaming. */
export function isStreaming() {
  return chat.querySelector('.msg[data-role="assistant"]:is([data-state="streaming"], [data-state="paused"])') !== null;
}

/** True when the chat shows at least one message of the conversation. */
export function hasMessages() {
  return chat.querySelector(".msg:not(.lost)") !== null;
}

/**
 * Replace the chat with the server's history (on every welcome). Messages the server lost (see
 * markHistoryLost) stay above it, unless `all` (a new conversation) clears them too.
 */
export function renderHistory(history, { all = false } = {}) {
  byId.clear();
  sources.clear();
  rendered.clear();
  announced.clear();
  pendingMetrics.clear();
  const kept = all ? [] : [...chat.querySelectorAll(".msg.lost, .history-lost")];
  chat.replaceChildren(...kept);
  for (const m of history || []) {
    const el = createMessage(String(m.id), m.role);
    announced.set(String(m.id), Infinity); // the past is not read out again
    fill(el, m, "done");
  }
  scrollToBottom();
  changed();
}

/**
 * The server no longer has the conversation this page shows: keep what is on screen, marked as
 * this page's copy only, and say so in the chat (and aloud).
 */
export function markHistoryLost(reason) {
  for (const el of chat.querySelectorAll(".msg:not(.lost)")) {
    el.classList.add("lost");
    byId.delete(el.dataset.id);
    el.dataset.source = sources.get(el.dataset.id) ?? "";
    el.dataset.id = `lost-${el.dataset.id}`;
  }
  const note = document.createElement("p");
  note.className = "history-lost";
  note.textContent = reason;
  chat.append(note);
  say(reason);
  scrollToBottom();
}

/** Create the message for m.id, or replace its text and state if it exists. */
export function upsertMessage(m) {
  const id = String(m.id);
  const el = byId.get(id) || createMessage(id, m.role);
  if (m.role && el.dataset.role !== m.role) el.dataset.role = m.role;
  fill(el, m, "streaming");
  if (el.dataset.role === "user" && m.text && !announced.has(id)) {
    announced.set(id, Infinity);
    say(`You: ${m.text}`);
  }
  if (el.dataset.role === "user") stickToBottom = true;
  changed();
}

/** Append a streamed piece of an assistant message. */
export function appendDelta({ id, text }) {
  if (!text) return;
  id = String(id);
  let el = byId.get(id);
  if (!el) {
    el = createMessage(id, "assistant");
    el.dataset.state = "streaming";
  }
  sources.set(id, (sources.get(id) || "") + text);
  scheduleRender(id);
  announce(id, false);
  changed();
}

/**
 * Apply a state change; an error text, when given, is shown inside the message. An interruption
 * brings the words the user heard (`text`) and the rest (`unspoken`), shown apart. `cut`: the
 * answer reached the model's length limit.
 */
export function setState({ id, state, error, text, unspoken, cut }) {
  id = String(id);
  let el = byId.get(id);
  // A turn can fail before its first word; its error still deserves a place in the chat.
  if (!el && state !== "error" && !error) return;
  el ||= createMessage(id, "assistant");
  el.dataset.state = state;
  if (typeof text === "string") sources.set(id, text);
  render(id);
  if (typeof unspoken === "string") showUnspoken(el, unspoken);
  showError(el, state, error);
  showCut(el, Boolean(cut));
  if (state === "paused") {
    if (spoken?.id === id) highlightSpoken(null);
  } else if (state !== "streaming") {
    announce(id, true);
    if (state === "error") say(`Parley: ${error || "something went wrong while answering."}`);
    if (state === "interrupted") say("Parley was interrupted.");
    if (cut) say("The answer was cut short at the length limit.");
    if (spoken?.id === id && state !== "done") highlightSpoken(null);
  }
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
  if (!line) {
    line = document.createElement("div");
    line.className = "metrics";
    el.append(line);
  }
  line.textContent = parts.join(" · ");
  line.title = details.join("\n");
  followBottom();
}

/**
 * The server's playout: sentence `sentence` of answer `id` started playing; it spans
 * [start, end) of the answer's text. sentence null: nothing is playing.
 */
export function showSpeaking({ id, sentence, start, end }) {
  if (sentence === null || sentence === undefined) return highlightSpoken(null);
  const key = String(id);
  const el = byId.get(key);
  const source = sources.get(key);
  if (!el || typeof source !== "string" || typeof start !== "number" || typeof end !== "number") return;
  render(key); // the spoken sentence must be on screen before it is marked
  highlightSpoken({ id: key, el, source, start, end });
}

/** The conversation as Markdown, for download. */
export function transcriptMarkdown() {
  const lines = [`# Parley conversation`, "", `Saved ${new Date().toLocaleString()}.`, ""];
  for (const el of chat.querySelectorAll(".msg")) {
    const who = WHO[el.dataset.role] || el.dataset.role;
    const state = el.dataset.state && el.dataset.state !== "done" && el.dataset.state !== "streaming" ? ` (${el.dataset.state})` : "";
    lines.push(`## ${who}${state}`, "", messageSource(el), "");
  }
  return lines.join("\n");
}

/** The Markdown source of one message element (what its Copy button copies). */
export function messageSource(el) {
  return sources.get(el.dataset.id) ?? el.dataset.source ?? el.querySelector(".text")?.textContent ?? "";
}

// ---- building messages ----------------------------------------------------------------------

function createMessage(id, role) {
  const el = document.createElement("article");
  el.className = "msg";
  el.dataset.role = role || "assistant";
  el.dataset.id = id;
  const head = document.createElement("div");
  head.className = "who";
  const name = document.createElement("span");
  name.className = "who-name";
  name.textContent = WHO[el.dataset.role] || el.dataset.role;
  const copy = document.createElement("button");
  copy.type = "button";
  copy.className = "copy-message";
  copy.textContent = "Copy";
  head.append(name, copy);
  const text = document.createElement("div");
  text.className = "text";
  el.append(head, text);
  chat.append(el);
  byId.set(id, el);
  const metrics = pendingMetrics.get(id);
  if (metrics) {
    pendingMetrics.delete(id);
    queueMicrotask(() => setMetrics(metrics));
  }
  followBottom();
  return el;
}

function fill(el, m, defaultState) {
  const id = el.dataset.id;
  sources.set(id, m.text ?? "");
  const state = m.state || el.dataset.state || (el.dataset.role === "assistant" ? defaultState : "");
  if (state) el.dataset.state = state;
  render(id);
  showUnspoken(el, m.unspoken || "");
  showError(el, state, m.error);
  showCut(el, Boolean(m.cut));
}

function scheduleRender(id) {
  if (dirty.has(id)) return;
  dirty.add(id);
  requestAnimationFrame(() => dirty.has(id) && render(id));
}

/** Rebuild a message's words from its source, if that changed (so an open preview or a selection survives otherwise). */
function render(id) {
  dirty.delete(id);
  const el = byId.get(id);
  if (!el) return;
  const box = el.querySelector(".text");
  const source = sources.get(id) || "";
  if (rendered.get(id) === source) return;
  rendered.set(id, source);
  if (el.dataset.role === "assistant") {
    box.replaceChildren(renderMarkdown(source));
    decorateCode(box, isHtmlPage(source));
  } else {
    box.textContent = source; // what the user typed or said, as it was
  }
  if (spoken?.id === id) highlightSpoken({ ...spoken, el });
  followBottom();
}

/** Put a bar with the language, a Copy button and (for a whole HTML page) Preview over each code block. */
function decorateCode(box, wholePage) {
  for (const pre of box.querySelectorAll("pre")) {
    const code = pre.querySelector("code");
    const language = /language-([\w+#.-]+)/.exec(code?.className || "")?.[1] || "";
    const frame = document.createElement("div");
    frame.className = "code";
    const bar = document.createElement("div");
    bar.className = "code-bar";
    const name = document.createElement("span");
    name.textContent = language || "code";
    const copy = document.createElement("button");
    copy.type = "button";
    copy.className = "copy-code";
    copy.textContent = "Copy code";
    bar.append(name, copy);
    const text = code?.textContent || "";
    if (wholePage || (/^html?$/i.test(language) && isHtmlPage(text))) {
      const preview = document.createElement("button");
      preview.type = "button";
      preview.className = "preview-html";
      preview.textContent = "Preview";
      bar.append(preview);
    }
    pre.replaceWith(frame);
    frame.append(bar, pre);
  }
}

/** The note of class `kind` under a message's words: shown with `text`, removed when text is empty. */
function showNote(el, kind, text, title = "") {
  let box = el.querySelector(`.${kind}`);
  if (!text) {
    box?.remove();
    return;
  }
  if (!box) {
    box = document.createElement("div");
    box.className = kind;
    if (title) box.title = title;
    el.querySelector(".text").after(box);
  }
  box.textContent = text;
}

function showUnspoken(el, words) {
  showNote(el, "unspoken", words, "Interrupted before Parley said this; it is not part of the conversation");
}

function showError(el, state, error) {
  showNote(el, "error", state === "error" || error ? error || "Something went wrong while answering." : "");
}

function showCut(el, cut) {
  el.dataset.cut = String(cut);
  showNote(el, "cut", cut ? "Cut short: the answer reached the model's length limit." : "");
}

// ---- the clicks inside messages -------------------------------------------------------------

chat.addEventListener("click", (e) => {
  const button = e.target instanceof Element ? e.target.closest("button") : null;
  if (!button) return;
  const message = button.closest(".msg");
  if (button.classList.contains("copy-message") && message) copyText(messageSource(message), button);
  else if (button.classList.contains("copy-code")) copyText(button.closest(".code")?.querySelector("pre")?.textContent || "", button);
  else if (button.classList.contains("preview-html")) togglePreview(button);
});

async function copyText(text, button) {
  const label = button.textContent;
  let ok = false;
  try {
    await navigator.clipboard.writeText(text);
    ok = true;
  } catch {
    // No clipboard API (an insecure context): select the text in a hidden box and copy that.
    const area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.className = "visually-hidden";
    document.body.append(area);
    area.select();
    try {
      ok = document.execCommand("copy");
    } catch {
      ok = false;
    }
    area.remove();
  }
  button.textContent = ok ? "Copied" : "Copy failed";
  say(ok ? "Copied." : "Could not copy: the browser refused.");
  setTimeout(() => (button.textContent = label), 1500);
}

/**
 * Show a whole HTML page the model wrote, only on the user's click, in an iframe sandboxed with
 * no permissions at all: no script, no same origin, no forms, no popups, no top navigation (and
 * the page's Content-Security-Policy, which it inherits, loads nothing from elsewhere).
 */
function togglePreview(button) {
  const frame = button.closest(".code");
  const open = frame.nextElementSibling?.classList.contains("html-preview") ? frame.nextElementSibling : null;
  if (open) {
    open.remove();
    button.textContent = "Preview";
    return;
  }
  const iframe = document.createElement("iframe");
  iframe.className = "html-preview";
  iframe.setAttribute("sandbox", "");
  iframe.setAttribute("referrerpolicy", "no-referrer");
  iframe.title = "Preview of the HTML page in Parley's answer (scripts do not run)";
  iframe.srcdoc = withoutRemoteLoads(frame.querySelector("pre").textContent);
  frame.after(iframe);
  button.textContent = "Close preview";
}

const PREVIEW_POLICY =
  "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; img-src data:; font-src data:\">";

/** The page with a policy of its own that loads nothing from anywhere (whatever the browser's inheritance). */
function withoutRemoteLoads(html) {
  for (const open of [/<head(\s[^>]*)?>/i, /<html(\s[^>]*)?>/i]) {
    const match = open.exec(html);
    if (match) return html.slice(0, match.index + match[0].length) + PREVIEW_POLICY + html.slice(match.index + match[0].length);
  }
  return PREVIEW_POLICY + html;
}

// ---- the spoken sentence ----------------------------------------------------------------------

/** Mark the sentence being spoken (target: { id, el, source, start, end }), or nothing (null). */
function highlightSpoken(target) {
  clearSpoken(chat);
  spoken = target;
  if (target) markSpoken(target.el, target.source, target.start, target.end);
}

// ---- announcements and scrolling ------------------------------------------------------------

/** Announce the whole sentences of message id not yet announced (all of it when final). */
function announce(id, final) {
  const done = announced.get(id) ?? 0;
  if (done === Infinity) return;
  const text = plainText(sources.get(id) || "");
  let cut = done;
  if (final) cut = text.length;
  else for (const m of text.matchAll(SENTENCE_END)) if (m.index + 1 > cut) cut = m.index + 1;
  if (final) announced.set(id, Infinity);
  else announced.set(id, cut);
  const words = text.slice(done, cut).trim();
  if (words) say(done === 0 ? `Parley: ${words}` : words);
}

/** One whole sentence or message for screen readers (the live region gets complete text only). */
function say(text) {
  const p = document.createElement("p");
  p.textContent = text;
  announcer.append(p);
  while (announcer.children.length > MAX_ANNOUNCEMENTS) announcer.firstElementChild.remove();
}

let lastHeight = chat.clientHeight;
chat.addEventListener("scroll", () => {
  if (chat.clientHeight !== lastHeight) return; // the chat was resized, the user did not scroll
  stickToBottom = chat.scrollHeight - chat.scrollTop - chat.clientHeight < 40;
});
// Notices, the keyboard or a rotation change the chat's height: keep the newest message in view.
new ResizeObserver(() => {
  lastHeight = chat.clientHeight;
  followBottom();
}).observe(chat);

function followBottom() {
  if (stickToBottom) scrollToBottom();
}

function scrollToBottom() {
  chat.scrollTop = chat.scrollHeight;
  stickToBottom = true;
}

function changed() {
  for (const fn of listeners) fn();
}
