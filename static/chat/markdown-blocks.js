// The Markdown grammar of answers (marked with GFM, raw HTML kept as text, math) and the rule for
// which leading blocks of a growing text are final. No DOM here: markdown.js renders and
// sanitizes, and the Node tests (tests/js/markdown-blocks.test.mjs) cut texts into deltas.

import { Marked } from "../vendor/marked.esm.js";
import { escapeHtml, mathExtensions } from "./math.js";

export const marked = new Marked({ gfm: true, breaks: false });
marked.use({ renderer: { html: ({ text }) => escapeHtml(text) } });
marked.use({ extensions: mathExtensions });
marked.use({
  tokenizer: {
    // marked passes text after an inline <script>, <pre>… tag through unescaped (a "raw block"),
    // for the tag to interpret it. Here tags are shown as text, so what follows them is text
    // too: "x <script> a <b" must read as it is written, not lose "<b" to the HTML parser.
    inlineText(src) {
      const found = this.rules.inline.text.exec(src);
      return found ? { type: "text", raw: found[0], text: found[0], escaped: false } : false;
    },
  },
});

// Right before a block: a blank line. A blank line ends a paragraph, a table, a quote and an HTML
// block of the kinds that end at one; what it does not end (a list, indented code) is decided by
// the first line after it, which `settle` waits for whole.
const BLANK_BEFORE = /\n[ \t]*\n[ \t]*$/;
const FENCE = /^ {0,3}(?:`{3,}|~{3,})/;

/** "\r\n" and "\r" as "\n", as marked reads them: offsets in the source are offsets in its tokens. */
export function normalize(source) {
  return source.replace(/\r\n?/g, "\n");
}

/**
 * Which leading blocks of `source` no text appended to it can change. A block is final when a
 * later block starts after a blank line and that block's first line has ended (then "1" cannot
 * still become "1.", a list item that would join the list above), or when it is a fenced code
 * block followed by anything (an unclosed fence runs to the end of the text). A block followed
 * by a line that merely looks like a new block is not: "para\n***" is a paragraph and a rule, but
 * "para\n***x" is one paragraph.
 *
 * Returns the tokens of `source`, how many of them are final (`settled`) and the length of their
 * source (`consumed`).
 */
export function settle(source) {
  const tokens = marked.lexer(source);
  let settled = 0;
  let consumed = 0;
  let offset = 0;
  let previous = null; // the last block before this token that is not blank space
  for (let index = 0; index < tokens.length; index += 1) {
    const token = tokens[index];
    // The lexer rewrote its input (it never should once normalized): nothing after is committed.
    if (!source.startsWith(token.raw, offset)) break;
    if (token.type !== "space" && previous) {
      const afterBlank = BLANK_BEFORE.test(source.slice(Math.max(0, offset - 64), offset));
      const lineEnded = source.indexOf("\n", offset) >= 0;
      const closedFence = previous.type === "code" && FENCE.test(previous.raw);
      if ((afterBlank && lineEnded) || closedFence) {
        settled = index;
        consumed = offset;
      }
    }
    if (token.type !== "space") previous = token;
    offset += token.raw.length;
  }
  return { tokens, settled, consumed };
}

/**
 * The text of a growing Markdown answer, split as it grows into final blocks and the open rest.
 * `append()` takes deltas; `split()` returns the blocks that became final since the last call
 * (`done`, each returned once, in order) and the tokens of the open rest (`open`), whose source is
 * all that is lexed again on each call. `reset()` starts again after `committed`, the source of
 * the blocks already kept. "\r\n" and "\r" count as "\n", also when a delta ends
 * between the two.
 */
export class BlockSplitter {
  constructor() {
    this.reset("");
  }

  /** `rest`: normalized text after `committed`; `carriage`: a "\r" left out at its end. */
  reset(committed, rest = "", carriage = false) {
    this.committed = committed;
    this.rest = rest;
    this.carriage = carriage;
  }

  append(delta) {
    let text = this.carriage ? `\r${delta}` : delta;
    this.carriage = text.endsWith("\r");
    if (this.carriage) text = text.slice(0, -1);
    this.rest += normalize(text);
  }

  split() {
    const { tokens, settled, consumed } = settle(this.rest);
    this.committed += this.rest.slice(0, consumed);
    this.rest = this.rest.slice(consumed);
    return { done: tokens.slice(0, settled), open: tokens.slice(settled) };
  }
}
