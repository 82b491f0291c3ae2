// One message of the chat as it is on screen: its element, its words, the notes and the latency
// line under them, and what its buttons do (Copy, Copy code, Preview).
//
// Invariants: every message element has data-role and data-id, and its words live in exactly one
// child with class "text": Parley's answers as rendered Markdown, each code block under a bar
// with its language and Copy code (and Preview for a whole HTML page), the user's words as plain
// text. The notes (unspoken, error, cut) and the metrics line sit below the words, each present
// only while it has something to say. A preview runs no script and loads nothing.

import { isHtmlPage, renderMarkdown } from "./markdown.js";

export const WHO = { user: "You", assistant: "Parley", system: "Parley (note)" };
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

/** A new, empty message element for id (not yet in the chat). */
export function newMessage(id, role) {
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
  return el;
}

/** Build the message's words from its source: Markdown for Parley's answers, plain text for the user's. */
export function showWords(el, source) {
  const box = el.querySelector(".text");
  if (el.dataset.role === "assistant") {
    box.replaceChildren(renderMarkdown(source));
    decorateCode(box, isHtmlPage(source));
  } else {
    box.textContent = source; // what the user typed or said, as it was
  }
}

/** Show the latency line for a turn (m: the server's metrics) under the message; false if it has none. */
export function showMetrics(el, m) {
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
    return false;
  }
  if (!line) {
    line = document.createElement("div");
    line.className = "metrics";
    el.append(line);
  }
  line.textContent = parts.join(" · ");
  line.title = details.join("\n");
  return true;
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

export function showUnspoken(el, words) {
  showNote(el, "unspoken", words, "Interrupted before Parley said this; it is not part of the conversation");
}

/** What the model was told the camera or screen showed with these words (a text-only model's scene note). */
export function showScene(el, scene) {
  showNote(el, "scene", scene, "What Parley's offline detectors found in your camera or screen when you spoke: all the model knows of it");
}

export function showError(el, state, error) {
  showNote(el, "error", state === "error" || error ? error || "Something went wrong while answering." : "");
}

export function showCut(el, cut) {
  el.dataset.cut = String(cut);
  showNote(el, "cut", cut ? "Cut short: the answer reached the model's length limit." : "");
}

/** Why Parley itself ended an answer early (it looped, or repeated an earlier one); "" or null: it did not. */
export function showStopped(el, why) {
  showNote(el, "stopped", why || "");
}

// ---- the clicks inside messages -------------------------------------------------------------

/**
 * Handle the buttons of the messages in container: sourceOf(el) is a message's Markdown (what
 * Copy copies), say(text) tells screen readers whether copying worked.
 */
export function handleClicks(container, { sourceOf, say }) {
  container.addEventListener("click", (e) => {
    const button = e.target instanceof Element ? e.target.closest("button") : null;
    if (!button) return;
    const message = button.closest(".msg");
    if (button.classList.contains("copy-message") && message) copyText(sourceOf(message), button, say);
    else if (button.classList.contains("copy-code")) copyText(button.closest(".code")?.querySelector("pre")?.textContent || "", button, say);
    else if (button.classList.contains("preview-html")) togglePreview(button);
  });
}

async function copyText(text, button, say) {
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
