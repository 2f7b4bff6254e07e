"""An answer's input fitted to its model's context: pure, no database, no settings, no clock.

A model reads at most its context size in tokens, the input and the answer together. An input
longer than that fails (the local model refuses it), or some servers answer an empty "completed".
So before an answer goes upstream its input is fitted (`fit`): the instructions and the newest
turns are kept and the oldest turns are left out whole, a user message with the answers after it,
never a message cut in half; the newest turn (the message being answered) is always sent, and
`Window.answer_tokens` stay free for the answer.

Tokens are estimated from characters. What a tokenizer makes of a text varies: English prose is
about 4 characters a token, code and other scripts are denser, Chinese about one. So the rate is
calibrated from the upstream's own count of this conversation's last input (`calibrated_rate`:
its `input_tokens` over the characters sent), and until one is known it is a conservative 3
characters a token. The per-message and per-request allowances stay on top of a calibrated rate
(which already holds its share of them): the estimate errs towards leaving out a turn too many.
"""

import dataclasses
import math

# Until the upstream has counted an input of this conversation: 3 characters a token, denser than
# English prose, so that a first fitting leaves room rather than overflows.
DEFAULT_TOKENS_PER_CHARACTER = 1 / 3
# A chat template wraps each message in role markers (ChatML: `<|im_start|>user\n … <|im_end|>\n`).
MESSAGE_TOKENS = 8
# And the request in a frame of its own (some templates add a default system prompt).
REQUEST_TOKENS = 32
# A part that is not text (an image, a file's data): about what common models count for an image.
ATTACHMENT_TOKENS = 1000
# A shorter input says more about the template than about the text's rate: not measured.
MIN_CALIBRATION_CHARACTERS = 500
# A calibrated rate is raised by this much: the next input's text is not the last one's.
CALIBRATION_MARGIN = 1.1
# What a tokenizer can plausibly make of a character; a report outside says nothing about text.
RATE_BOUNDS = (1 / 16, 2.0)


@dataclasses.dataclass(frozen=True)
class Window:
    """A model's context: `context_tokens` in all, `answer_tokens` of them kept for the answer."""

    context_tokens: int
    answer_tokens: int

    @property
    def input_tokens(self):
        return max(self.context_tokens - self.answer_tokens, 0)


@dataclasses.dataclass(frozen=True)
class Fitted:
    """What is sent: `items`, the newest of the input; `dropped` items before them left out;
    `characters` of text sent (the instructions' included), which the upstream's count of this
    input calibrates the next fitting with; `estimated_tokens`, this input by the estimate."""

    items: list
    dropped: int
    characters: int
    estimated_tokens: int
    # What the window leaves of the context after this input, by the estimate (negative when
    # the newest turn alone is over it).
    room_tokens: int = 0

    def output_cap(self, max_output_tokens, floor):
        """`max_output_tokens` held to what the context leaves after this input, at least `floor`
        (the least an API takes); None stays None (no cap is sent). An input and a cap together
        over the context are refused by some servers (vLLM answers 400), and no model writes past
        its context anyway: a budget's large rest or a site limit must not ask for it."""
        if max_output_tokens is None:
            return None
        return max(floor, min(max_output_tokens, self.room_tokens))


def calibrated_rate(input_tokens, characters):
    """Tokens per character from one input actually sent: the upstream's `input_tokens` for it and
    the `characters` it held; the default when that says too little (nothing reported, too short)."""
    if not input_tokens or not characters or characters < MIN_CALIBRATION_CHARACTERS:
        return DEFAULT_TOKENS_PER_CHARACTER
    measured = max(input_tokens - REQUEST_TOKENS, 0) / characters * CALIBRATION_MARGIN
    low, high = RATE_BOUNDS
    return min(max(measured, low), high)


def measure(item):
    """(characters of text, parts that are not text) of one Open Responses message item, whose
    content is a string or a list of parts (`input_text`, `output_text`, `input_image`…)."""
    content = item.get("content")
    if isinstance(content, str):
        return len(content), 0
    characters = others = 0
    for part in content or ():
        text = part.get("text") if isinstance(part, dict) else None
        if isinstance(text, str):
            characters += len(text)
        else:
            others += 1
    return characters, others


def turns(items, follow_up=0):
    """`items` cut before each user message: a question with the answers that followed it. The
    last `follow_up` items belong to the turn before them, whatever their roles."""
    grouped = []
    for item in items[: len(items) - follow_up]:
        if not grouped or item.get("role") == "user":
            grouped.append([])
        grouped[-1].append(item)
    if follow_up:
        if not grouped:
            grouped.append([])
        grouped[-1].extend(items[len(items) - follow_up :])
    return grouped


def fit(items, instructions, window, rate=DEFAULT_TOKENS_PER_CHARACTER, follow_up=0):
    """The newest of `items` (a path's message items, oldest first) that fit `window` with
    `instructions`, at `rate` tokens per character (see calibrated_rate).

    `follow_up`: the last items go on from the newest turn rather than start one (a continued
    answer's text so far, then the ask to go on, which is a user message): they are sent with the
    question they answer, never without it, since the model cannot continue what it is not sent.
    """

    def tokens(characters, others=0):
        return math.ceil(characters * rate) + others * ATTACHMENT_TOKENS

    spent = REQUEST_TOKENS + tokens(len(instructions))
    characters = len(instructions)
    kept = []
    for number, turn in enumerate(reversed(turns(items, follow_up))):
        sizes = [measure(item) for item in turn]
        cost = sum(tokens(*size) + MESSAGE_TOKENS for size in sizes)
        if number and spent + cost > window.input_tokens:
            break  # this turn and every older one are left out: what is sent stays contiguous
        kept[:0] = turn
        spent += cost
        characters += sum(size[0] for size in sizes)
    return Fitted(
        items=kept,
        dropped=len(items) - len(kept),
        characters=characters,
        estimated_tokens=spent,
        room_tokens=window.context_tokens - spent,
    )
