// LaTeX math in answers: `$…$` and `\(…\)` inline, `$$…$$` and `\[…\]` displayed, typeset by KaTeX.
//
// One set of delimiter rules serves the chat page (as marked extensions, so code spans and code
// blocks, which marked reads first, never hold math) and the admin transcript (splitMath, on the
// raw text). A formula is math only once its closing delimiter is there: while an answer streams,
// half a formula stays text and becomes math when the rest arrives.
//
// Under the strict CSP (style-src 'self', no inline styles): katex.render() builds DOM nodes and
// sets their sizes through element.style (CSSOM), which the policy allows, where renderToString's
// markup would carry style="" attributes the policy refuses. KaTeX's stylesheet and fonts are
// served from static/vendor/katex/. `trust: false` (the default) keeps \href, \includegraphics and
// \html… commands out: a model's formula cannot make a link, load a URL or add classes.

import katex from "../vendor/katex/katex.mjs";

// A formula holds no blank line: a blank line ends a Markdown paragraph, so a display formula
// with one inside would be committed half-way while it streams (markdown.js) and then change.
const BLANK_LINE = /\n[ \t]*\n/;

// `$…$` by the usual rule (pandoc's, KaTeX's auto-render's): no space right after the opening
// `$`, none right before the closing one, and no digit right after it, so "$5 and $10" is money.
const INLINE_DOLLAR = /^\$(?![\s$])((?:\\[\s\S]|[^\\$])*?[^\\\s$])\$(?!\d)/;
const DISPLAY_DOLLAR = /^\$\$([\s\S]+?)\$\$/;
const INLINE_PAREN = /^\\\(([\s\S]+?)\\\)/;
const DISPLAY_BRACKET = /^\\\[([\s\S]+?)\\\]/;

// Where a formula may start: the inline text tokenizer must stop there.
const OPENING = /\$|\\[([]/;

/** The formula `src` starts with: {raw, tex, display}, or null. */
export function matchMath(src) {
  for (const [pattern, display] of [
    [DISPLAY_DOLLAR, true],
    [DISPLAY_BRACKET, true],
    [INLINE_PAREN, false],
    [INLINE_DOLLAR, false],
  ]) {
    const found = pattern.exec(src);
    if (!found) continue;
    const tex = found[1];
    if (!tex.trim() || BLANK_LINE.test(tex)) return null;
    return { raw: found[0], tex: tex.trim(), display };
  }
  return null;
}

/** Text as HTML text: markdown-blocks.js shows raw HTML in model output this way too. */
export function escapeHtml(text) {
  return text.replace(/[&<>"']/g, (char) => `&#${char.charCodeAt(0)};`);
}

// The placeholder markdown.js sanitizes like any other markup; typeset() fills it afterwards.
// Its text is the formula's source, which stays if KaTeX cannot typeset it.
function placeholder(token, tag) {
  const display = token.display ? ' data-display="true"' : "";
  return `<${tag} class="math" data-tex="${escapeHtml(token.tex)}"${display}>${escapeHtml(token.raw)}</${tag}>`;
}

/** marked extensions: a display formula alone in its block, and formulas inside a paragraph. */
export const mathExtensions = [
  {
    name: "mathBlock",
    level: "block",
    start(src) {
      const index = src.search(/^ {0,3}(?:\$\$|\\\[)/m);
      return index < 0 ? undefined : index;
    },
    tokenizer(src) {
      const indent = /^ {0,3}/.exec(src)[0];
      const found = matchMath(src.slice(indent.length));
      if (!found || !found.display) return undefined;
      // Only a formula that ends its line makes a block; text after it makes it a paragraph's.
      const after = /^[ \t]*(?:\n|$)/.exec(src.slice(indent.length + found.raw.length));
      if (!after) return undefined;
      return { type: "mathBlock", raw: indent + found.raw + after[0], tex: found.tex, display: true };
    },
    renderer(token) {
      return placeholder(token, "div");
    },
  },
  {
    name: "math",
    level: "inline",
    start(src) {
      const index = src.search(OPENING);
      return index < 0 ? undefined : index;
    },
    tokenizer(src) {
      const found = matchMath(src);
      return found ? { type: "math", raw: found.raw, tex: found.tex, display: found.display } : undefined;
    },
    renderer(token) {
      return placeholder(token, "span");
    },
  },
];

// Bounds on what one formula may cost the page: KaTeX's own defaults allow far more.
const KATEX_OPTIONS = { throwOnError: false, maxSize: 50, maxExpand: 500, strict: "ignore" };

/** Typesets every placeholder under `root` (a fragment or an element). */
export function typeset(root) {
  for (const element of root.querySelectorAll(".math[data-tex]")) {
    const tex = element.dataset.tex;
    element.removeAttribute("data-tex");
    try {
      katex.render(tex, element, { ...KATEX_OPTIONS, displayMode: element.dataset.display === "true" });
    } catch {
      // A formula KaTeX refuses outright (beyond throwOnError's reach) stays as its source.
      element.textContent = tex;
    }
  }
  return root;
}

// Code in raw Markdown, where the admin transcript must not look for math: fenced blocks and
// backtick spans.
const CODE = /(^|\n)( {0,3})(`{3,}|~{3,})[^\n]*\n[\s\S]*?(?:\n {0,3}\3[`~]*[ \t]*(?=\n|$)|$)|(`+)[\s\S]*?[^`]\4(?!`)/g;

/**
 * The raw text of a message as [{text} | {tex, display, raw}] parts, for pages that show the
 * source rather than rendered Markdown (the admin transcript). Code is left as text.
 */
export function splitMath(text) {
  const parts = [];
  let plain = "";
  const pushFormulas = (segment) => {
    let index = 0;
    while (index < segment.length) {
      const rest = segment.slice(index);
      const next = rest.search(OPENING);
      if (next < 0) {
        plain += rest;
        break;
      }
      if (next > 0 && rest[next - 1] === "\\" && rest[next] === "$") {
        plain += rest.slice(0, next + 1); // \$ is a dollar sign
        index += next + 1;
        continue;
      }
      plain += rest.slice(0, next);
      const found = matchMath(rest.slice(next));
      if (found) {
        if (plain) parts.push({ text: plain });
        plain = "";
        parts.push(found);
        index += next + found.raw.length;
      } else {
        plain += rest[next];
        index += next + 1;
      }
    }
  };
  let last = 0;
  for (const code of text.matchAll(CODE)) {
    pushFormulas(text.slice(last, code.index));
    plain += code[0];
    last = code.index + code[0].length;
  }
  pushFormulas(text.slice(last));
  if (plain) parts.push({ text: plain });
  return parts;
}

/** Replaces `element`'s text with the same text, its formulas typeset (the admin transcript). */
export function typesetText(element) {
  const parts = splitMath(element.textContent);
  if (!parts.some((part) => part.tex !== undefined)) return;
  const nodes = parts.map((part) => {
    if (part.tex === undefined) return document.createTextNode(part.text);
    const holder = document.createElement(part.display ? "div" : "span");
    holder.className = "math";
    holder.dataset.tex = part.tex;
    if (part.display) holder.dataset.display = "true";
    holder.textContent = part.raw;
    return holder;
  });
  element.replaceChildren(...nodes);
  typeset(element);
}
