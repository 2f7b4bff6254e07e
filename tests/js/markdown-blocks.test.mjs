// Incremental Markdown (static/chat/markdown-blocks.js) without a browser: texts cut into deltas
// in many ways, with renders at random points, must give the blocks one lexing of the whole text
// gives, and the same HTML. Run with `node --test tests/js/`.

import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { BlockSplitter, marked, normalize, settle } from "../../static/chat/markdown-blocks.js";

// Texts where a block looks final before it is: a paragraph followed by what could start a
// block ("***", "#", a fence) until the line goes on; a list a blank line away from "1" that
// becomes "1." and joins it; indented code that goes on after a blank line; setext underlines;
// a table that interrupts a paragraph, and one whose delimiter row turns out not to be one; fences with blank lines, tildes, longer closing fences.
const TRICKY = [
  "para\n***x and more\n\nnext\n",
  "para\n#not a heading\n\n# a heading\ntext\n",
  "para\n```x`y\nstill the paragraph\n\nafter\n",
  "1. a\n\n1. b\n\n2. c\n\nend\n",
  "- a\n\n  continued\n\n- b\n\n---\n\n-\n\nx\n",
  "    code\n\n    more code\n\nnot code\n",
  "Title\n===\n\nSub\n---\ntext\n-\n",
  "para\n| a | b |\n|---|---:|\n| 1 | 2 |\nlazy row\n\nafter\n",
  "para\na | b\n-|-x\n\nafter\n",
  "```js\nlet a = 1;\n\n\nlet b = 2;\n````\n\n~~~\ntilde\n```\n~~~\ntext\n```\nunclosed\n\nfence\n",
  "> quote\nlazy\n\n> other\n\n>\n\nplain\n",
  "* a\n    * nested\n        * deeper\n\n      loose\n* b\n\n+ other bullet\n",
  "<div>\n<img src=x onerror=alert(1)>\n</div>\n\n<script>alert(2)</script>\n\n<!-- c\n\n-->\n\n<pre>\n\n</pre>\n",
  "A [link](https://example.com/a_b) and <https://example.com> and [x](javascript:alert(1)).\n\n",
  "$$\n\\int_0^1 x\\,dx\n$$\n\nInline $x^2$ and \\(y\\) and $5 or $6.\n\n\\[a\\]\n\n$$a\n\nb$$\n",
  "Windows\r\nline\r\n\r\nends\r\n\r\n- a\r\n",
  "# h1\n## h2 ##\n####### seven\n#\n\n  indented para\n\n\n\n\ttab\n",
  "- [ ] task\n- [x] done\n\n1) paren\n2) list\n\n3. other\n",
];

const WORDS = "the relay keeps every delta in order while the worker coalesces tokens".split(" ");

/** A long answer of the kind a model writes: what bench/browser.py streams, and more. */
function longAnswer(sections) {
  const parts = [];
  for (let section = 1; section <= sections; section += 1) {
    const prose = Array.from({ length: 40 }, (_, k) => WORDS[(section + k) % WORDS.length]).join(" ");
    parts.push(
      `## Section ${section}\n\n${prose}, **bold**, *em*, \`code\` and a [link](https://example.com/${section}).\n\n`,
      `${[0, 1, 2, 3].map((k) => `- item ${k}\n  - nested ${k}`).join("\n")}\n\n`,
      `\`\`\`python\ndef f_${section}(x):\n\n    return x * ${section}\n\`\`\`\n`,
      `| a | b |\n|---|---|\n${[0, 1, 2].map((k) => `| ${k} | ${section * k} |`).join("\n")}\n\n`,
      `> ${prose.slice(0, 60)}\n> more\n\n1. first\n2. second\n\n${section % 3 ? "***" : "Setext\n---"}\n`,
    );
  }
  return parts.join("");
}

/** A seeded generator (mulberry32): the same cuts on every run, different ones per seed. */
function random(seed) {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function cut(text, next, largest) {
  const deltas = [];
  for (let start = 0; start < text.length; ) {
    const size = 1 + Math.floor(next() * largest);
    deltas.push(text.slice(start, start + size));
    start += size;
  }
  return deltas;
}

const html = (tokens) => marked.parser(tokens);

/**
 * Streams `deltas` as MarkdownStream does (render() at the points `renderAfter` picks, finish()
 * lexing what is left after the committed blocks) and returns the blocks in the order kept.
 */
function stream(deltas, renderAfter) {
  const splitter = new BlockSplitter();
  const kept = [];
  let text = "";
  let committed = "";
  deltas.forEach((delta, index) => {
    splitter.append(delta);
    text += delta;
    if (!renderAfter(index)) return;
    const { done, open } = splitter.split();
    kept.push(...done);
    // The kept blocks are the committed source; with the open rest (lexed as `open`), they are
    // the text so far, less a "\r" waiting for its "\n".
    assert.equal(done.map((token) => token.raw).join(""), splitter.committed.slice(committed.length));
    committed = splitter.committed;
    assert.equal(committed + splitter.rest, normalize(text.endsWith("\r") ? text.slice(0, -1) : text));
    assert.ok(open.length > 0 || splitter.rest === "");
  });
  kept.push(...marked.lexer(normalize(text).slice(splitter.committed.length)));
  return kept;
}

function assertLikeOneRender(text, kept, message) {
  const whole = marked.lexer(normalize(text));
  assert.deepEqual(
    kept.map((token) => token.raw),
    whole.map((token) => token.raw),
    message,
  );
  assert.equal(html(kept), html(whole), message);
}

describe("incremental Markdown equals one render of the final text", () => {
  test("every tricky text, one character per delta, rendered after each", () => {
    for (const text of TRICKY) {
      const deltas = [...text];
      assertLikeOneRender(text, stream(deltas, () => true), JSON.stringify(text));
    }
  });

  test("every tricky text cut in two at every position", () => {
    for (const text of TRICKY) {
      for (let at = 1; at < text.length; at += 1) {
        const deltas = [text.slice(0, at), text.slice(at)];
        assertLikeOneRender(text, stream(deltas, () => true), `${JSON.stringify(text)} cut at ${at}`);
      }
    }
  });

  test("the tricky texts together and a long answer, cut at random, rendered at random", () => {
    const texts = [TRICKY.join("\n"), longAnswer(12)];
    for (const [number, text] of texts.entries()) {
      for (let seed = 1; seed <= 60; seed += 1) {
        const next = random(seed * 7919 + number);
        const deltas = cut(text, next, 1 + Math.floor(next() * 40));
        const odds = next();
        const kept = stream(deltas, () => next() < odds);
        assertLikeOneRender(text, kept, `text ${number}, seed ${seed}`);
      }
    }
  });

  test("a long answer is committed as it streams: what is lexed again stays one block", () => {
    const text = longAnswer(20);
    const splitter = new BlockSplitter();
    let longest = 0;
    for (const delta of cut(text, random(3), 30)) {
      splitter.append(delta);
      splitter.split();
      longest = Math.max(longest, splitter.rest.length);
    }
    assert.ok(longest < 400, `the open rest reached ${longest} characters`);
    assert.ok(splitter.committed.length > text.length - 400);
  });
});

describe("the grammar", () => {
  test("text after an inline tag is text, as the tag is", () => {
    const rendered = html(marked.lexer("x <script> a <b & c </scr\n\n<pre> d <i"));
    // The second is an HTML block, shown as text whole.
    assert.equal(rendered, "<p>x &#60;script&#62; a &lt;b &amp; c &lt;/scr</p>\n&#60;pre&#62; d &#60;i");
  });
});

describe("settle", () => {
  test("keeps open what the next line can still change", () => {
    const open = (source) => settle(source).consumed;
    // A list and a "1" that can become "1.", a list item of the same list.
    assert.equal(open("1. a\n\n1"), 0);
    assert.equal(open("1. a\n\n1.\n"), 0);
    // A paragraph and a rule that "***x" turns back into the paragraph's text.
    assert.equal(open("para\n***"), 0);
    assert.equal(open("para\n***\n\nnext"), 0);
    // After a blank line and a whole line, what came before is final.
    assert.equal(open("para\n\nnext\n"), "para\n\n".length);
    assert.equal(open("1. a\n\nfoo\n"), "1. a\n\n".length);
    // A fence followed by anything was closed (an open one runs to the end).
    assert.equal(open("```\nx\n```\nt"), "```\nx\n```\n".length);
    assert.equal(open("```\nx\n\ny\n"), 0);
  });
});
