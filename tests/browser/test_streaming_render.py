"""The answer's incremental render (static/chat/markdown.js, markdown-blocks.js) in Chromium: a
streamed answer's DOM is the DOM of the same answer after a reload, and HTML or a link cut
across deltas is text or a safe link at every step, never markup that runs."""

import itertools
import random

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import answers, log_in, send, wait_until_idle
from tests.upstream import answer, held

pytestmark = pytest.mark.browser

# Blocks that look final before they are (markdown-blocks.js), and what a long answer holds.
CORPUS = "".join(
    [
        "## Streaming notes\n\nA paragraph with **bold**, *emphasis*, `code` and a [link](https://example.com/a).\n\n",
        "para\n***x is text, not a rule\n\n1. one\n\n1. joins the list\n\n2. and so on\n\nend of list\n\n",
        "- a\n    - nested\n        - deeper\n\n      loose\n- b\n\n",
        "```python\ndef step(value):\n\n    return value * 2  # a blank line inside\n```\n",
        "After the fence.\n\n| name | value |\n|---|---:|\n| a | 1 |\n| b | 2 |\n\n",
        "> quoted\nlazy line\n\nSetext\n---\n\n    indented code\n\n    more of it\n\n",
        "<div>not <b>markup</b></div>\n\nInline $x^2$ math and\n\n$$\n\\int_0^1 x\\,dx\n$$\n\n",
        "~~~\ntilde fence\n~~~\n\nThe end.\n",
    ]
)

# Each piece ends where a tag, a URL or an attribute is half written.
HOSTILE = [
    "Before <im",
    "g src=x one",
    'rror="window.pwned=1">',
    " and <scr",
    "ipt>window.pwned=2</scr",
    "ipt> and [click](javas",
    "cript:window.pwned=3) and [ok](https://exa",
    'mple.com/"onmouseover="window.pwned=4) and <a hr',
    'ef="javascript:window.pwned=5">x</a>\n\n<svg onlo',
    'ad="window.pwned=6"></svg>\n\n```\n<img src=x onerror="window.pwned=7">\n```\n',
]

BODIES = """() => [...document.querySelectorAll('article[aria-label="Assistant message"] .message-body')]
  .map((body) => body.innerHTML)"""

# What would run or load: script elements, event-handler attributes, javascript: URLs, SVG.
DANGERS = """() => {
  const found = [];
  for (const node of document.querySelectorAll('.message-body, .message-body *')) {
    if (['SCRIPT', 'SVG', 'IFRAME', 'OBJECT', 'EMBED'].includes(node.tagName.toUpperCase())) found.push(node.tagName);
    for (const attribute of node.attributes) {
      if (attribute.name.startsWith('on')) found.push(`${node.tagName} ${attribute.name}`);
      if (/^\\s*javascript:/i.test(attribute.value)) found.push(`${node.tagName} ${attribute.name}=${attribute.value}`);
    }
  }
  return found;
}"""


def random_cut(text, seed, largest):
    rng = random.Random(seed)
    pieces, start = [], 0
    while start < len(text):
        size = rng.randint(1, largest)
        pieces.append(text[start : start + size])
        start += size
    return pieces


def test_a_streamed_answer_is_the_same_dom_as_after_a_reload(page, upstream):
    log_in(page)
    for seed, largest in [(1, 3), (2, 40)]:
        upstream.queue(answer(random_cut(CORPUS, seed, largest), pause=0.002))
        send(page, f"Write the notes ({seed})")
        wait_until_idle(page)
        expect(answers(page).nth(seed - 1)).to_have_attribute("data-status", "completed")
    streamed = page.evaluate(BODIES)
    assert len(streamed) == 2
    # The blocks a render keeps are the final text's: highlighted once, no streaming leftovers.
    assert 'class="markdown-tail"' not in "".join(streamed)
    assert answers(page).first.locator("code.language-python.hljs").count() == 1
    page.reload()
    expect(answers(page)).to_have_count(2)
    expect(answers(page).last).to_have_attribute("data-status", "completed")
    assert page.evaluate(BODIES) == streamed
    assert streamed[0] == streamed[1]


def test_html_and_links_cut_across_deltas_never_run(page, upstream):
    page.add_init_script("window.pwned = 0;")
    log_in(page)
    steps = answer(HOSTILE, pause=0.01)
    gates = []
    for piece, following in itertools.pairwise(HOSTILE):
        # The stream waits after each piece, so the page renders every half-written state.
        steps, gate = held(steps, before=following)
        gates.append((piece, gate))
    upstream.queue(steps)
    send(page, "Show me some HTML")
    reply = answers(page).first
    for piece, gate in gates:
        # Once a piece's last characters are on the page, that state was rendered (text after
        # a half-open "<script>" is text too: markdown-blocks.js).
        expect(reply.locator(".message-body")).to_contain_text(piece[-5:])
        assert page.evaluate(DANGERS) == []
        gate.event.set()
    wait_until_idle(page)
    expect(reply).to_have_attribute("data-status", "completed")
    expect(reply.locator(".message-body")).to_contain_text('Before <img src=x onerror="window.pwned=1">')
    expect(reply.locator(".message-body")).to_contain_text("<script>window.pwned=2</script>")
    assert page.evaluate(DANGERS) == []
    streamed = page.evaluate(BODIES)
    page.reload()
    expect(answers(page).first).to_have_attribute("data-status", "completed")
    assert page.evaluate(BODIES) == streamed
    assert page.evaluate(DANGERS) == []
    assert page.evaluate("window.pwned") == 0


# The page's own highlight.js, for the test to read a grammar's state (window.testHljs).
IMPORT_HLJS = """async () => {
  const entry = performance.getEntriesByType("resource").find((item) => /\\/highlight[^/]*\\.js/.test(item.name));
  window.testHljs = (await import(entry.name)).default;
}"""
COMPILED = "(language) => Boolean(window.testHljs.getLanguage(language).isCompiled)"


def test_a_fence_s_language_is_compiled_while_the_fence_streams_and_the_block_highlighted_once_final(page, upstream):
    """Compiling a grammar is most of a language's first highlight: it is done in a task of its
    own while the fence streams, not in the render that commits the block. A fence that names an
    alias, an unknown language or no language at all is shown all the same."""
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    log_in(page)
    pieces = [
        "Code:\n\n```python\n",
        "def step(value):\n    return value * 2\n",
        "```\n\n```py\nprint(1)\n```\n\n```notalanguage\nplain\n```\n\n```\nno language\n```\n\nAfter.\n",
    ]
    steps, gate = held(answer(pieces, pause=0.01), before=pieces[2])
    upstream.queue(steps)
    page.evaluate(IMPORT_HLJS)
    assert page.evaluate(COMPILED, "python") is False
    send(page, "Show me some code")
    reply = answers(page).first
    expect(reply.locator(".message-body")).to_contain_text("return value * 2")
    # The fence is still open: shown plain, its grammar compiled ahead of the commit.
    page.wait_for_function(COMPILED, arg="python")
    assert reply.locator("code.hljs").count() == 0
    gate.event.set()
    wait_until_idle(page)
    expect(reply).to_have_attribute("data-status", "completed")
    expect(reply.locator("code.language-python.hljs")).to_have_count(1)
    expect(reply.locator("code.language-py.hljs")).to_have_count(1)
    expect(reply.locator("code.language-notalanguage")).to_have_text("plain\n")
    expect(reply.locator(".message-body")).to_contain_text("no language")
    assert errors == []
