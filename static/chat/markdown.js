// Markdown for model output: marked parses, DOMPurify sanitizes before anything reaches the
// document, highlight.js colours fenced code, KaTeX typesets math (math.js). Raw HTML in model
// output is shown as text, not interpreted: a model quoting `<img onerror=...>` means the
// characters, not an image.

import DOMPurify from "../vendor/purify.es.mjs";
import hljs from "../vendor/highlight.min.js";
import { BlockSplitter, marked, normalize } from "./markdown-blocks.js";
import { typeset } from "./math.js";

// Beyond these sizes a code block is shown without colours: highlighting is linear in the text.
// A block is highlighted once, when it is final (a fence still streaming is shown plain).
const HIGHLIGHT_LIMIT = 20_000;
const AUTO_DETECT_LIMIT = 5_000;

// Markdown makes no media, SVG or MathML, and only <img> may fetch anything on its own: every other
// way of loading a URL (srcset, poster, <source>, SVG <image>…) is forbidden outright.
const PURIFY_OPTIONS = {
  RETURN_DOM_FRAGMENT: true,
  FORBID_TAGS: [
    "style",
    "form",
    "button",
    "textarea",
    "select",
    "option",
    "dialog",
    "svg",
    "math",
    "video",
    "audio",
    "source",
    "track",
    "picture",
  ],
  FORBID_ATTR: ["style", "id", "name", "srcset", "sizes", "poster", "background", "ping"],
};

// Hosts images may load from (CHAT_IMAGE_HOSTS): none by default, so a model's Markdown cannot
// make the browser call out to arbitrary servers (privacy).
const IMAGE_HOSTS = (() => {
  const data = document.getElementById("page-data");
  const hosts = data ? JSON.parse(data.textContent).image_hosts || [] : [];
  return hosts.map((host) => host.toLowerCase());
})();

/**
 * The URL an image in model output may load, or null. Never this site: an image loads with the
 * reader's cookies, so `![x](/admin/...)` would make the reader (staff reading a transcript, say)
 * send a request of the model's choosing as themselves. Only an absolute http(s) URL to a
 * CHAT_IMAGE_HOSTS host passes, on another host name than this page's (cookies ignore ports).
 *
 * The URL is parsed without a base, so relative, root-relative and protocol-relative shapes (and
 * encoded or backslashed ones) do not parse and are refused, and the image is given the URL as
 * parsed: the browser would resolve some shapes (`https:host/path` on an https page) against the
 * page instead, so what is checked must be what loads.
 */
function allowedImageURL(source) {
  let url;
  try {
    url = new URL(source);
  } catch {
    return null;
  }
  if (url.protocol !== "https:" && url.protocol !== "http:") return null;
  if (url.username || url.password || url.hostname === location.hostname) return null;
  return IMAGE_HOSTS.includes(url.host) ? url.href : null;
}

DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  // Still in DOMPurify's inert document here, where nothing loads.
  for (const attribute of ["src", "srcset", "poster", "background", "ping"]) {
    if (node.tagName !== "IMG" || attribute !== "src") node.removeAttribute(attribute);
  }
  if (node.tagName === "A" && node.hasAttribute("href")) {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer");
  } else if (node.tagName === "IMG") {
    const allowed = allowedImageURL(node.getAttribute("src") || "");
    if (allowed) {
      node.setAttribute("src", allowed);
    } else {
      node.removeAttribute("src"); // decorate() shows a stand-in instead
    }
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
  // The open block of a streaming text is rendered again on every update: highlighting it each
  // time cost more than the rest of the render; it is coloured once it is final.
  if (streaming || text.length > HIGHLIGHT_LIMIT) return;
  const match = /(?:^|\s)language-([\w+#.-]+)/.exec(code.className);
  const language = match && hljs.getLanguage(match[1]) ? match[1] : null;
  let result;
  if (language) {
    result = hljs.highlight(text, { language, ignoreIllegals: true });
  } else if (!match && text.length <= AUTO_DETECT_LIMIT) {
    result = hljs.highlightAuto(text);
  } else {
    return;
  }
  // highlight.js escapes the code it wraps in spans; sanitizing again keeps the rule simple:
  // nothing reaches the document without going through DOMPurify.
  code.replaceChildren(sanitize(result.value));
  code.classList.add("hljs");
}

/**
 * Compiles the grammar of the language a streaming fence names, in a task of its own, before the
 * fence is final. Compiling is most of the first highlight of a language (tens of ms on a slow
 * machine: the longest task of a streaming answer was the render that committed its first code
 * block); once compiled, highlighting that block in the render that commits it is cheap.
 */
class GrammarWarmer {
  constructor() {
    this.requested = new Set();
  }

  /** `token`: the last block of the open tail. */
  prepare(token) {
    if (token?.type !== "code" || !token.lang || OPENING_FENCE.test(token.raw)) return;
    const language = token.lang.split(/\s/, 1)[0];
    if (this.requested.has(language) || !hljs.getLanguage(language)) return;
    this.requested.add(language);
    setTimeout(() => hljs.highlight("", { language, ignoreIllegals: true }), 0);
  }
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
  // A fence whose opening line is still streaming may be naming its language ("pyt…"): no
  // label until that line ends, rather than "code" or half a name.
  label.textContent = options.openingLine ? "" : match ? match[1] : "code";
  const copy = document.createElement("button");
  copy.type = "button";
  copy.className = "copy-button";
  copy.textContent = "Copy";
  head.append(label, copy);
  pre.replaceWith(block);
  block.append(head, pre);
}

function blockImages(fragment) {
  for (const image of fragment.querySelectorAll("img")) {
    if (image.hasAttribute("src")) continue; // allowed by the sanitizer hook
    const standIn = document.createElement("span");
    standIn.className = "blocked-image";
    standIn.title = "Images from this site or from hosts not allowed are not loaded";
    standIn.textContent = `[image: ${image.getAttribute("alt") || "untitled"}]`;
    image.replaceWith(standIn);
  }
}

function decorate(fragment, options) {
  blockImages(fragment);
  // After sanitizing: KaTeX's own nodes (MathML for screen readers among them) are trusted.
  typeset(fragment);
  const blocks = [...fragment.querySelectorAll("pre")];
  blocks.forEach((pre, index) => {
    const last = index === blocks.length - 1;
    decorateCodeBlock(pre, { ...options, openingLine: last && options.openingLine });
  });
  for (const table of fragment.querySelectorAll("table")) {
    const wrap = document.createElement("div");
    wrap.className = "table-wrap";
    table.replaceWith(wrap);
    wrap.append(table);
  }
  return fragment;
}

// A fenced code block whose opening line (the fence and its language) has not ended yet.
const OPENING_FENCE = /^ {0,3}(?:`{3,}|~{3,})[^\n]*$/;

function renderTokens(tokens, options) {
  // Only the last block of a streaming text can still be opening its fence.
  const last = tokens.findLast((token) => token.type !== "space");
  const openingLine = Boolean(options.streaming && last?.type === "code" && OPENING_FENCE.test(last.raw));
  return decorate(sanitize(marked.parser(tokens)), { ...options, openingLine });
}

/** Markdown source to a sanitized, decorated DocumentFragment, in MarkdownStream's chunks. */
export function renderMarkdown(source) {
  const container = document.createElement("div");
  new MarkdownStream(container).finish(source);
  const fragment = document.createDocumentFragment();
  fragment.append(...container.childNodes);
  return fragment;
}

// A reference-style link definition (`[name]: url`) can change blocks rendered before it.
const REFERENCE_DEFINITION = /^ {0,3}\[[^\]]+\]:/m;

// Committed blocks are kept in chunks of this many blocks. chat.css gives chunks
// `content-visibility: auto`: the browser skips style, layout and paint of the chunks off screen,
// so what a frame costs does not grow with the length of the answer (docs/benchmarks.md).
const CHUNK_BLOCKS = 16;

// Rendering again more source than this at finish() is done in slices of about SLICE_MS each,
// in tasks of their own, so that no task runs long (~1 ms per 1,000 characters on a slow machine).
const SLICE_CHARS = 10_000;
const SLICE_MS = 10;

function firstDifference(one, other) {
  const length = Math.min(one.length, other.length);
  let index = 0;
  while (index < length && one.charCodeAt(index) === other.charCodeAt(index)) index += 1;
  return index;
}

/**
 * Renders a growing Markdown text into a container at a cost bounded by its last block.
 *
 * Blocks that no text appended can change (markdown-blocks.js says which) are rendered once and
 * kept ("committed"), in chunks of CHUNK_BLOCKS blocks; only the open rest (the "tail") is parsed
 * and rendered again on each update. Text arrives through `append()` (a delta: no work on what
 * came before) or `set()` (the whole text, e.g. a snapshot after a reconnect) and reaches the
 * page on `render()` (follow.js calls it at most once per animation frame, and at most ten times
 * a second while an answer streams).
 *
 * `finish()` renders the final text. When it starts with what was committed (the usual case),
 * only the rest is rendered. When it differs, the chunks from the first one that differs are
 * rendered again; when it defines reference links, which can change any block above them, all
 * of them are. Rendering a lot again happens in slices, the old rendering staying on the page
 * until the new one replaces it at once. Either way the page ends as one render of the final
 * text would make it.
 */
export class MarkdownStream {
  constructor(container) {
    this.container = container;
    this.grammars = new GrammarWarmer();
    this.clear();
  }

  clear() {
    this.container.replaceChildren();
    // The committed source (`splitter.committed`) and the open rest after it.
    this.splitter = new BlockSplitter();
    this.replacement = null; // a whole text from set(), for the next render()
    this.dirty = false;
    this.finished = false;
    this.slicing = null; // a finish() being rendered in slices
    this.chunks = []; // {element, start (offset in the source), blocks}
    this.tail = document.createElement("div");
    this.tail.className = "markdown-tail";
    this.container.append(this.tail);
  }

  /** The source of the committed blocks. */
  get committed() {
    return this.splitter.committed;
  }

  /** The whole text so far; on the page after the next render(). */
  set(text) {
    this.slicing = null;
    this.replacement = text;
    this.dirty = true;
  }

  /** Text added at the end; on the page after the next render(). */
  append(delta) {
    if (this.slicing) {
      this.set(this.slicing.source + delta);
    } else if (this.replacement !== null || this.finished) {
      this.set((this.replacement ?? this.committed) + delta);
    } else {
      this.splitter.append(delta);
      this.dirty = true;
    }
  }

  /** A whole text at once: `set(text)` and `render()`. */
  update(text) {
    this.set(text);
    this.render();
  }

  /** Brings the page up to date with the text: renders what was committed since, and the tail. */
  render() {
    if (!this.dirty) return;
    this.dirty = false;
    if (this.replacement !== null) this.replace();
    const start = this.committed.length;
    const { done, open } = this.splitter.split();
    if (done.length > 0) this.fillChunks(done, this.chunks, start, (element) => this.tail.before(element));
    this.tail.replaceChildren(renderTokens(open, { streaming: true }));
    this.grammars.prepare(open.findLast((token) => token.type !== "space"));
  }

  /** Takes the text given to set(): keeps the chunks it starts with, the rest is open again. */
  replace() {
    const text = this.replacement;
    this.replacement = null;
    // A "\r" at the end may be the first half of a "\r\n" the next delta completes.
    const carriage = text.endsWith("\r");
    const source = normalize(carriage ? text.slice(0, -1) : text);
    this.dropChunks(this.keptChunks(source));
    if (this.finished) {
      this.finished = false;
      this.container.append(this.tail);
    }
    this.splitter.reset(this.committed, source.slice(this.committed.length), carriage);
  }

  /** Renders the final text; see the class comment for what is kept. */
  finish(text) {
    const source = normalize(text);
    this.replacement = null;
    this.dirty = false;
    if (this.slicing?.source === source) return; // already on its way
    this.slicing = null;
    if (this.finished && source === this.committed) return; // e.g. the same answer after a reconnect
    const keep = this.committed && REFERENCE_DEFINITION.test(source) ? 0 : this.keptChunks(source);
    const start = keep < this.chunks.length ? this.chunks[keep].start : this.committed.length;
    if (keep < this.chunks.length && source.length - start > SLICE_CHARS) {
      this.slicing = { source, keep, tokens: marked.lexer(source.slice(start)), offset: start, chunks: [] };
      this.slice(this.slicing);
      return;
    }
    this.dropChunks(keep);
    this.tail.remove();
    const place = (element) => this.container.append(element);
    this.fillChunks(marked.lexer(source.slice(start)), this.chunks, start, place);
    this.splitter.reset(source);
    this.finished = true;
  }

  /** Renders the next slice of a finish() into new chunks off the page; the last puts them in. */
  slice(slicing) {
    if (this.slicing !== slicing) return; // replaced by newer text
    const fragment = (slicing.fragment ??= document.createDocumentFragment());
    const started = performance.now();
    while (slicing.tokens.length > 0 && performance.now() - started < SLICE_MS) {
      const tokens = slicing.tokens.splice(0, CHUNK_BLOCKS);
      slicing.offset = this.fillChunks(tokens, slicing.chunks, slicing.offset, (element) => fragment.append(element));
    }
    if (slicing.tokens.length > 0) {
      setTimeout(() => this.slice(slicing), 0);
      return;
    }
    this.dropChunks(slicing.keep);
    this.tail.remove();
    this.container.append(fragment);
    this.chunks.push(...slicing.chunks);
    this.splitter.reset(slicing.source);
    this.finished = true;
    this.slicing = null;
  }

  /**
   * How many chunks `source` still starts with. A change can alter the block just before it (a
   * lazy continuation line, a setext underline), so a chunk ending where the texts part is not
   * kept either.
   */
  keptChunks(source) {
    if (source.startsWith(this.committed)) return this.chunks.length;
    const differs = firstDifference(this.committed, source);
    let keep = this.chunks.length;
    let end = this.committed.length;
    while (keep > 0 && end + 1 >= differs) {
      keep -= 1;
      end = this.chunks[keep].start;
    }
    return keep;
  }

  /** Removes the chunks after the first `keep`, and their blocks from what is committed. */
  dropChunks(keep) {
    if (keep >= this.chunks.length) return;
    this.splitter.reset(this.committed.slice(0, this.chunks[keep].start));
    for (const chunk of this.chunks.splice(keep)) chunk.element.remove();
  }

  /**
   * Renders finished blocks into `chunks`, opening a new chunk (put on the page by `place`) every
   * CHUNK_BLOCKS blocks; `start` is where the blocks start in the source. Returns where they end.
   */
  fillChunks(tokens, chunks, start, place) {
    let index = 0;
    while (index < tokens.length) {
      let chunk = chunks.at(-1);
      if (!chunk || (chunk.blocks >= CHUNK_BLOCKS && tokens[index].type !== "space")) {
        chunk = { element: document.createElement("div"), start, blocks: 0 };
        chunk.element.className = "markdown-chunk";
        place(chunk.element);
        chunks.push(chunk);
      }
      const group = [];
      while (index < tokens.length && (chunk.blocks < CHUNK_BLOCKS || tokens[index].type === "space")) {
        const token = tokens[index];
        if (token.type !== "space") chunk.blocks += 1;
        start += token.raw.length;
        group.push(token);
        index += 1;
      }
      chunk.element.append(renderTokens(group, { streaming: false }));
    }
    return start;
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

/** Copies `text` and says how it went on the Copy `button` for a moment. */
export async function copyFrom(button, text) {
  const copied = await copyText(text);
  button.textContent = copied ? "Copied" : "Copy failed";
  setTimeout(() => {
    button.textContent = "Copy";
  }, 1500);
}

/** Handles a click on a code block's Copy button (delegated from the message list). */
export async function copyCode(button) {
  const code = button.closest(".code-block")?.querySelector("pre code, pre");
  if (code) await copyFrom(button, code.textContent);
}
