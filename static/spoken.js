// The sentence being spoken, marked on screen from the server's playout (source positions in the
// answer's Markdown, which the rendered blocks map back to through their data-lines).
//
// Invariant: at most one message is .playing, and only the innermost blocks holding the sentence
// are .spoken; where the browser has the CSS Custom Highlight API, the sentence's own words are
// the "parley-spoken" highlight.

import { plainText } from "./markdown.js";

const HIGHLIGHT = "parley-spoken";

/** Unmark whatever is marked in container. */
export function clearSpoken(container) {
  for (const el of container.querySelectorAll(".spoken")) el.classList.remove("spoken");
  container.querySelector(".msg.playing")?.classList.remove("playing");
  if (typeof CSS !== "undefined" && CSS.highlights) CSS.highlights.delete(HIGHLIGHT);
}

/** Mark the characters [start, end) of message el's source (its Markdown) as being spoken. */
export function markSpoken(el, source, start, end) {
  el.classList.add("playing");
  const lead = source.slice(start, end).search(/\S/);
  const first = lineOf(source, start + Math.max(0, lead));
  const last = lineOf(source, Math.max(start, end - 1));
  const box = el.querySelector(".text");
  for (const block of box.querySelectorAll("[data-lines]")) {
    const [from, to] = block.dataset.lines.split(",").map(Number);
    if (from <= last && to > first) block.classList.add("spoken");
  }
  // Only the innermost marked blocks stay marked (a list item, not the whole list).
  for (const block of box.querySelectorAll(".spoken")) if (block.querySelector(".spoken")) block.classList.remove("spoken");
  if (typeof CSS !== "undefined" && CSS.highlights && typeof Highlight === "function") {
    const range = findWords(box, plainText(source.slice(start, end)).trim());
    if (range) CSS.highlights.set(HIGHLIGHT, new Highlight(range));
  }
}

function lineOf(text, index) {
  let line = 0;
  for (let i = text.indexOf("\n"); i !== -1 && i < index; i = text.indexOf("\n", i + 1)) line += 1;
  return line;
}

/** A Range over the first place `words` appear in box's text (whitespace-insensitive), or null. */
function findWords(box, words) {
  if (words.length < 2) return null;
  const chars = [];
  const where = [];
  const walker = document.createTreeWalker(box, NodeFilter.SHOW_TEXT, {
    acceptNode: (n) => (n.parentElement?.closest(".code-bar") ? NodeFilter.FILTER_REJECT : NodeFilter.FILTER_ACCEPT),
  });
  let space = true;
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const value = node.nodeValue;
    for (let i = 0; i < value.length; i++) {
      const blank = /\s/.test(value[i]);
      if (blank && space) continue;
      chars.push(blank ? " " : value[i]);
      where.push([node, i]);
      space = blank;
    }
  }
  const text = chars.join("");
  const at = text.indexOf(words);
  if (at < 0) return null;
  const range = document.createRange();
  range.setStart(...where[at]);
  const [endNode, endOffset] = where[at + words.length - 1];
  range.setEnd(endNode, endOffset + 1);
  return range;
}
