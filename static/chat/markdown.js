// Markdown for model output: marked parses, DOMPurify sanitizes before anything reaches the
// document, highlight.js colours fenced code. Raw HTML in model output is shown as text, not
// interpreted: a model quoting `<img onerror=...>` means the characters, not an image.

import { Marked } from "../vendor/marked.esm.js";
import DOMPurify from "../vendor/purify.es.mjs";
import hljs from "../vendor/highlight.min.js";

// Beyond these sizes a code block is shown without colours: highlighting is linear in the text
// and runs again on every animation frame while the block is still streaming.
const HIGHLIGHT_LIMIT = 20_000;
const AUTO_DETECT_LIMIT = 5_000;

function escapeHtml(text) {
  return text.replace(/[&<>"']/g, (char) => `&#${char.charCodeAt(0)};`);
}

const marked = new Marked({ gfm: true, breaks: false });
marked.use({ renderer: { html: ({ text }) => escapeHtml(text) } });

const PURIFY_OPTIONS = {
  RETURN_DOM_FRAGMENT: true,
  FORBID_TAGS: ["style", "form", "button", "textarea", "select", "option", "dialog"],
  FORBID_ATTR: ["style", "id", "name"],
};

DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A" && node.hasAttribute("href")) {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer");
  } else if (node.tagName === "IMG") {
    node.setAttribute("referrerpolicy", "no-referrer");
    node.setAttribute("loading", "lazy");
  } else if (node.tagName === "INPUT") {
    // GFM task lists are the only inputs Markdown makes; keep them as read-only checkmarks.
    if (node.getAttribute("type") !== "checkbox") {
      node.remove();
    } else {
      node.setAttribute("disabled", "");
    }
  }
});

function sanitize(html) {
  return DOMPurify.sanitize(html, PURIFY_OPTIONS);
}

function highlight(code, { streaming }) {
  const text = code.textContent;
  if (text.length > HIGHLIGHT_LIMIT) return;
  const match = /(?:^|\s)language-([\w+#.-]+)/.exec(code.className);
  const language = match && hljs.getLanguage(match[1]) ? match[1] : null;
  let result;
  if (language) {
    result = hljs.highlight(text, { language, ignoreIllegals: true });
  } else if (!streaming && !match && text.length <= AUTO_DETECT_LIMIT) {
    result = hljs.highlightAuto(text);
  } else {
    return;
  }
  // highlight.js escapes the code it wraps in spans; sanitizing again keeps the rule simple:
  // nothing reaches the document without going through DOMPurify.
  code.replaceChildren(sanitize(result.value));
  code.classList.add("hljs");
}

function decorateCodeBlock(pre, options) {
  const code = pre.querySelector("code");
  if (!code) return;
  highlight(code, options);
  const match = /(?:^|\s)language-([\w+#.-]+)/.exec(code.className);
  const block = document.createElement("div");
  block.className = "code-block";
  const head = document.createElement("div");
  head.className = "code-head";
  const label = document.createElement("span");
  label.className = "code-language";
  label.textContent = match ? match[1] : "code";
  const copy = document.createElement("button");
  copy.type = "button";
  copy.className = "copy-button";
  copy.textContent = "Copy";
  head.append(label, copy);
  pre.replaceWith(block);
  block.append(head, pre);
}

// Hosts images may load from besides this site (CHAT_IMAGE_HOSTS): none by default, so a model's
// Markdown cannot make the browser call out to arbitrary servers (privacy).
const IMAGE_HOSTS = (() => {
  const data = document.getElementById("page-data");
  return data ? JSON.parse(data.textContent).image_hosts || [] : [];
})();

function imageAllowed(src) {
  try {
    const url = new URL(src, location.href);
    const web = url.protocol === "https:" || url.protocol === "http:";
    return web && (url.origin === location.origin || IMAGE_HOSTS.includes(url.host));
  } catch {
    return false;
  }
}

function blockForeignImages(fragment) {
  for (const image of fragment.querySelectorAll("img")) {
    if (imageAllowed(image.getAttribute("src") || "")) continue;
    const standIn = document.createElement("span");
    standIn.className = "blocked-image";
    standIn.title = "Images from other sites are not loaded";
    standIn.textContent = `[image: ${image.getAttribute("alt") || "untitled"}]`;
    image.replaceWith(standIn);
  }
}

function decorate(fragment, options) {
  blockForeignImages(fragment);
  for (const pre of fragment.querySelectorAll("pre")) decorateCodeBlock(pre, options);
  for (const table of fragment.querySelectorAll("table")) {
    const wrap = document.createElement("div");
    wrap.className = "table-wrap";
    table.replaceWith(wrap);
    wrap.append(table);
  }
  return fragment;
}

function renderTokens(tokens, options) {
  return decorate(sanitize(marked.parser(tokens)), options);
}

/** Markdown source to a sanitized, decorated DocumentFragment. */
export function renderMarkdown(source) {
  return renderTokens(marked.lexer(normalize(source)), { streaming: false });
}

// A reference-style link definition (`[name]: url`) can change blocks rendered before it.
const REFERENCE_DEFINITION = /^ {0,3}\[[^\]]+\]:/m;

function normalize(source) {
  return source.replace(/\r\n?/g, "\n");
}

/**
 * Renders a growing Markdown text into a container at a cost bounded by its last block.
 *
 * Top-level blocks followed by another block cannot change when text is appended, so they are
 * rendered once and kept ("committed"); only the open last block is parsed and rendered again
 * on each update. `finish()` renders the whole text from scratch once, which also settles what
 * block-by-block parsing cannot know (reference links defined further down).
 */
export class MarkdownStream {
  constructor(container) {
    this.container = container;
    this.clear();
  }

  clear() {
    this.container.replaceChildren();
    this.source = "";
    this.committedLength = 0;
    this.finished = false;
    this.tail = document.createElement("div");
    this.tail.className = "markdown-tail";
    this.container.append(this.tail);
  }

  update(text) {
    const source = normalize(text);
    if (source === this.source && !this.finished) return;
    if (this.finished || !source.startsWith(this.source.slice(0, this.committedLength))) {
      this.clear(); // the text was replaced, not extended (a snapshot after a reconnect)
    }
    this.source = source;
    const rest = source.slice(this.committedLength);
    const tokens = marked.lexer(rest);
    let last = tokens.length - 1;
    while (last >= 0 && tokens[last].type === "space") last -= 1;
    let settled = 0;
    let consumed = 0;
    for (let index = 0; index < last; index += 1) {
      const raw = tokens[index].raw;
      if (!rest.startsWith(raw, consumed)) break; // the lexer rewrote its input: do not commit
      consumed += raw.length;
      settled = index + 1;
    }
    if (settled > 0) {
      this.tail.before(renderTokens(tokens.slice(0, settled), { streaming: false }));
      this.committedLength += consumed;
    }
    this.tail.replaceChildren(renderTokens(tokens.slice(settled), { streaming: true }));
  }

  finish(text) {
    const source = normalize(text);
    if (source === this.source && !this.finished && !REFERENCE_DEFINITION.test(source)) {
      // The final text is what streamed: the committed blocks cannot change, so only the open
      // last block is rendered again, as final. Re-rendering a long answer whole here was the
      // longest task of a stream (docs/benchmarks.md).
      const rest = source.slice(this.committedLength);
      this.tail.replaceWith(renderTokens(marked.lexer(rest), { streaming: false }));
    } else {
      // Replaced text, or reference links defined below their use: render it all.
      this.container.replaceChildren(renderMarkdown(source));
    }
    this.source = source;
    this.committedLength = source.length;
    this.finished = true;
  }
}

function copyWithSelection(text) {
  // For pages without the async clipboard (plain HTTP) or when it refuses (document not focused).
  const scratch = document.createElement("textarea");
  scratch.className = "visually-hidden";
  scratch.value = text;
  scratch.setAttribute("readonly", "");
  document.body.append(scratch);
  scratch.select();
  try {
    return document.execCommand("copy");
  } finally {
    scratch.remove();
  }
}

/** Puts `text` on the clipboard; true when it got there. */
export async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    return copyWithSelection(text);
  }
}

/** Handles a click on a code block's Copy button (delegated from the message list). */
export async function copyCode(button) {
  const code = button.closest(".code-block")?.querySelector("pre code, pre");
  if (!code) return;
  const copied = await copyText(code.textContent);
  button.textContent = copied ? "Copied" : "Copy failed";
  setTimeout(() => {
    button.textContent = "Copy";
  }, 1500);
}
