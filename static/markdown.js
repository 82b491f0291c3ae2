// A model's answer as safe HTML: markdown-it renders, DOMPurify sanitizes (both from npm).
//
// Invariants: the result never holds script, event handlers, javascript: URLs, forms, frames or
// anything that loads by itself (images are not rendered: `![alt](url)` stays a link the user may
// click); links open in a new tab without the page's referrer. Raw HTML in the answer is shown as
// text. Each block element carries data-lines="first,end" (its source lines in the answer, end
// exclusive) so the sentence being spoken can be found on screen.

import markdownit from "/vendor/markdown-it.js";
import DOMPurify from "/vendor/purify.js";

const md = markdownit({ html: false, linkify: true, breaks: true, typographer: false });
md.disable("image");

const MARKED = new Set(["paragraph_open", "heading_open", "list_item_open", "table_open", "blockquote_open", "fence", "code_block", "hr"]);
md.core.ruler.push("source_lines", (state) => {
  for (const token of state.tokens) {
    if (token.map && MARKED.has(token.type) && !token.hidden) token.attrSet("data-lines", `${token.map[0]},${token.map[1]}`);
  }
});

// A fence's attributes land on its <code>; move data-lines up to the <pre> the page wraps.
const fence = md.renderer.rules.fence;
md.renderer.rules.fence = (tokens, idx, options, env, self) => {
  const lines = tokens[idx].attrGet("data-lines");
  tokens[idx].attrs = (tokens[idx].attrs || []).filter(([name]) => name !== "data-lines");
  const html = fence(tokens, idx, options, env, self);
  return lines ? html.replace(/^<pre/, `<pre data-lines="${lines}"`) : html;
};

const PURIFY = {
  ALLOWED_URI_REGEXP: /^(?:https?:|mailto:|#)/i,
  FORBID_TAGS: ["style", "img", "svg", "math", "form", "input", "button", "iframe", "object", "embed", "video", "audio", "source"],
  ADD_ATTR: ["data-lines", "target"],
  RETURN_DOM_FRAGMENT: true,
};

DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A") {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer nofollow");
  }
});

const WHOLE_PAGE = /^\s*(?:<!doctype\s+html|<html[\s>])/i;

/** True when text is (the start of) a whole HTML document rather than prose. */
export function isHtmlPage(text) {
  return WHOLE_PAGE.test(text);
}

/** The answer as a sanitized DocumentFragment; a whole HTML document is shown as its source. */
export function renderMarkdown(text) {
  const source = isHtmlPage(text) ? "```html\n" + text + "\n```" : text;
  return DOMPurify.sanitize(md.render(source), PURIFY);
}

/**
 * The words of a piece of Markdown as they appear on screen, roughly: code blocks (closed or
 * still open) dropped, link targets dropped, markup characters removed, whitespace collapsed.
 * Used to find a spoken sentence in the rendered text and to announce whole sentences.
 */
export function plainText(text) {
  return text
    .replace(/```[\s\S]*?(?:```|$)/g, " ")
    .replace(/!?\[([^\]]*)\]\([^)]*\)/g, "$1")
    .replace(/<[^>]*>/g, " ")
    .replace(/[*_`#>|~]/g, "")
    .replace(/\s+/g, " ");
}
