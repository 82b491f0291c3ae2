// The chat pane: the conversation as the server sends it (history, messages, streamed pieces,
// states, metrics, the sentence being spoken), one <article> per message (built by message.js),
// keyed by the server's message id; what screen readers hear of it; and its scrolling.
//
// Invariants: a message's words are rebuilt from its source (kept in `sources`: Markdown for
// Parley's answers, plain text for the user's) whenever that changes, so the screen always shows
// the whole answer rendered, never fragments. An assistant message always carries data-state
// (streaming, done, paused, interrupted or error; paused: the user spoke over it and it waits to
// hear whether that was a backchannel). The log itself is not a live region: whole sentences and
// messages are announced through #announcer instead.

import { plainText } from "./markdown.js";
import { WHO, handleClicks, newMessage, showCut, showError, showStopped, showMetrics, showScene, showUnspoken, showWords } from "./message.js";
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
 * markHistoryLost) stay above it, unless `all` (a new conversation) clears them too. `earlier`:
 * how many older messages the server left out (a long conversation comes a page at a time).
 */
export function renderHistory(history, { all = false, earlier = 0 } = {}) {
  byId.clear();
  sources.clear();
  rendered.clear();
  announced.clear();
  pendingMetrics.clear();
  const kept = all ? [] : [...chat.querySelectorAll(".msg.lost, .history-lost")];
  chat.replaceChildren(...kept);
  if (earlier > 0) {
    const note = document.createElement("p");
    note.className = "history-earlier";
    note.textContent = `${earlier} earlier message${earlier === 1 ? " is" : "s are"} not shown.`;
    chat.append(note);
  }
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
export function setState({ id, state, error, text, unspoken, cut, stopped }) {
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
  if (stopped) showStopped(el, stopped);
  if (state === "paused") {
    if (spoken?.id === id) highlightSpoken(null);
  } else if (state !== "streaming") {
    announce(id, true);
    if (state === "error") say(`Parley: ${error || "something went wrong while answering."}`);
    if (state === "interrupted") say("Parley was interrupted.");
    if (cut) say("The answer was cut short at the length limit.");
    if (stopped) say(stopped);
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
  if (showMetrics(el, m)) followBottom();
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
  const el = newMessage(id, role);
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
  showScene(el, m.scene || "");
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
  const source = sources.get(id) || "";
  if (rendered.get(id) === source) return;
  rendered.set(id, source);
  showWords(el, source);
  if (spoken?.id === id) highlightSpoken({ ...spoken, el });
  followBottom();
}

// Copy, Copy code and Preview inside the messages (message.js); copying is announced.
handleClicks(chat, { sourceOf: messageSource, say });

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
