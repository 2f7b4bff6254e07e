"""Fitting an answer's input to its model's context (chat/answering/context.py), and the settings
that size each model's context (chatsite/settings.py)."""

import pytest
from django.core.exceptions import ImproperlyConfigured

from chat.answering import context
from chat.answering.context import Window, calibrated_rate, fit
from chatsite.settings import envcontext, envcontexts

# One token a character: sizes below read as token counts.
EXACT = 1.0
OVERHEAD = context.REQUEST_TOKENS


def message(role, characters, mark="x"):
    return {"type": "message", "role": role, "content": mark * characters}


def cost(*sizes):
    """Tokens of messages of these sizes at one token a character, with their allowances."""
    return sum(size + context.MESSAGE_TOKENS for size in sizes)


def conversation(*sizes):
    """Alternating user and assistant messages of these sizes, each marked by its place."""
    return [
        message("user" if number % 2 == 0 else "assistant", size, chr(97 + number)) for number, size in enumerate(sizes)
    ]


def test_an_input_that_fits_is_sent_whole():
    items = conversation(100, 100, 100)
    fitted = fit(items, "Be brief.", Window(1000, 200), EXACT)
    assert fitted.items == items and fitted.dropped == 0
    assert fitted.characters == len("Be brief.") + 300
    assert fitted.estimated_tokens == OVERHEAD + len("Be brief.") + cost(100, 100, 100)


def test_the_oldest_turns_are_dropped_whole_and_the_newest_kept():
    items = conversation(300, 300, 300, 300, 100)
    # Room for the newest three messages, and the instructions, not for a fourth.
    window = Window(OVERHEAD + 10 + cost(300, 300, 100) + 200 + 50, 200)
    fitted = fit(items, "y" * 10, window, EXACT)
    assert fitted.items == items[2:]
    assert fitted.dropped == 2
    assert fitted.items[0]["role"] == "user", "what is sent starts with a question, never a lone answer"
    assert all(item["content"] == original["content"] for item, original in zip(fitted.items, items[2:], strict=True))


def test_a_turn_that_does_not_fit_is_left_out_with_everything_older_even_if_an_older_one_would_fit():
    items = conversation(10, 10, 900, 900, 10)
    window = Window(OVERHEAD + cost(900, 10) + 100, 50)
    fitted = fit(items, "", window, EXACT)
    assert fitted.items == items[4:], "what is sent is the newest part of the path, contiguous"


def test_the_newest_user_message_is_sent_even_when_it_alone_is_over_the_window():
    items = conversation(100, 100, 5000)
    fitted = fit(items, "", Window(1000, 250), EXACT)
    assert fitted.items == items[2:] and fitted.dropped == 2


def test_follow_up_items_are_sent_with_the_question_they_go_on_from_never_without_it():
    """A continued answer: the question, the text so far and the ask to go on make the newest
    turn, which goes whole, over the window too; the older turns make the room."""
    items = [*conversation(100, 100, 300), message("assistant", 600, "t"), message("user", 20, "c")]
    window = Window(OVERHEAD + cost(300, 600, 20) + 100, 100)
    fitted = fit(items, "", window, EXACT, follow_up=2)
    assert fitted.items == items[2:] and fitted.dropped == 2
    # Over the window, the newest turn still goes whole, and alone.
    fitted = fit(items, "", Window(OVERHEAD + 500, 100), EXACT, follow_up=2)
    assert fitted.items == items[2:]
    # Without follow_up the ask to go on is a turn of its own, and the text it needs is dropped.
    assert fit(items, "", Window(OVERHEAD + 500, 100), EXACT).items == items[-1:]
    # Follow-up items alone (nothing before them) are one turn.
    assert fit(items[-2:], "", window, EXACT, follow_up=2).items == items[-2:]


def test_the_output_cap_is_held_to_what_the_context_leaves_after_the_input():
    items = conversation(100, 100, 300)
    fitted = fit(items, "", Window(2000, 500), EXACT)
    room = 2000 - fitted.estimated_tokens
    assert fitted.room_tokens == room
    assert fitted.output_cap(1_000_000, 16) == room
    assert fitted.output_cap(room - 1, 16) == room - 1, "a smaller cap stays"
    assert fitted.output_cap(None, 16) is None, "no cap asked for, none sent"
    # An input over the whole context leaves nothing: the API's floor is sent.
    over = fit(conversation(5000), "", Window(2000, 500), EXACT)
    assert over.room_tokens < 0 and over.output_cap(1000, 16) == 16


def test_the_instructions_always_go_and_count_against_the_window():
    items = conversation(200, 200, 200)
    without = fit(items, "", Window(800, 100), EXACT)
    with_instructions = fit(items, "i" * 300, Window(800, 100), EXACT)
    assert without.dropped == 0
    assert with_instructions.dropped == 2 and with_instructions.characters == 300 + 200


def test_the_room_for_the_answer_is_kept_free():
    items = conversation(400, 400, 400)
    assert fit(items, "", Window(OVERHEAD + cost(400, 400, 400), 0), EXACT).dropped == 0
    assert fit(items, "", Window(OVERHEAD + cost(400, 400, 400), 1), EXACT).dropped == 2


def test_consecutive_user_messages_make_one_turn_each():
    # An answer that produced no text is not in the input: two questions follow one another.
    items = [message("user", 500), message("user", 500), message("assistant", 500), message("user", 10)]
    fitted = fit(items, "", Window(OVERHEAD + cost(500, 500, 10) + 10, 10), EXACT)
    assert fitted.items == items[1:] and fitted.dropped == 1


def test_parts_are_measured_by_their_text_and_an_attachment_by_its_allowance():
    parts = {
        "type": "message",
        "role": "user",
        "content": [
            {"type": "input_text", "text": "a" * 40},
            {"type": "input_image", "image_url": "data:image/png;base64," + "A" * 100_000},
        ],
    }
    assert context.measure(parts) == (40, 1)
    fitted = fit([message("user", 100), message("assistant", 100), parts], "", Window(100_000, 0), EXACT)
    assert fitted.estimated_tokens == OVERHEAD + cost(100, 100, 40) + context.ATTACHMENT_TOKENS
    assert fitted.characters == 240, "an image's data is not text the tokenizer reads"


def test_a_higher_rate_leaves_out_more():
    items = conversation(*[400] * 9)
    window = Window(4096, 1024)
    plain = fit(items, "", window, 0.25)
    dense = fit(items, "", window, 1.0)
    assert plain.dropped == 0
    assert dense.dropped > plain.dropped and dense.estimated_tokens <= window.input_tokens


def test_without_a_count_the_rate_is_the_conservative_default():
    assert context.DEFAULT_TOKENS_PER_CHARACTER > 1 / 4, "denser than English prose's 4 characters a token"
    assert calibrated_rate(None, 5000) == calibrated_rate(0, 5000) == context.DEFAULT_TOKENS_PER_CHARACTER
    assert calibrated_rate(900, None) == context.DEFAULT_TOKENS_PER_CHARACTER


def test_a_count_of_a_short_input_says_too_little_to_calibrate():
    short = context.MIN_CALIBRATION_CHARACTERS - 1
    assert calibrated_rate(400, short) == context.DEFAULT_TOKENS_PER_CHARACTER


def test_the_rate_follows_the_upstreams_count_with_a_margin():
    # Prose at 4 characters a token, Chinese at about one.
    prose = calibrated_rate(1000 + OVERHEAD, 4000)
    chinese = calibrated_rate(4000 + OVERHEAD, 4000)
    assert prose == pytest.approx(0.25 * context.CALIBRATION_MARGIN)
    assert chinese == pytest.approx(1.0 * context.CALIBRATION_MARGIN)


def test_an_implausible_count_is_held_within_bounds():
    low, high = context.RATE_BOUNDS
    assert calibrated_rate(1, 100_000) == low
    assert calibrated_rate(10_000_000, 1000) == high


def test_the_input_tokens_of_a_window_leave_the_answers_room():
    assert Window(2048, 512).input_tokens == 1536
    assert Window(100, 400).input_tokens == 0


# --- The settings -----------------------------------------------------------------------------


def test_context_sizes_are_read_per_model(monkeypatch):
    monkeypatch.setenv("SIZES", " org/big-model:v2=128000 , small=8_192")
    assert envcontexts("SIZES", {}) == {"org/big-model:v2": 128_000, "small": 8192}


@pytest.mark.parametrize("value", [None, "", "  "])
def test_unset_context_sizes_are_the_default(monkeypatch, value):
    if value is None:
        monkeypatch.delenv("SIZES", raising=False)
    else:
        monkeypatch.setenv("SIZES", value)
    assert envcontexts("SIZES", {"m": 4096}) == {"m": 4096}


@pytest.mark.parametrize("value", ["big", "=4096", "big=", "big=lots", "big=-5", "big=100", "a=4096,b"])
def test_malformed_context_sizes_fail_loudly(monkeypatch, value):
    monkeypatch.setenv("SIZES", value)
    with pytest.raises(ImproperlyConfigured, match="SIZES"):
        envcontexts("SIZES", {})


def test_a_default_context_too_small_to_hold_an_answer_fails_loudly(monkeypatch):
    monkeypatch.setenv("SIZE", "128")
    with pytest.raises(ImproperlyConfigured, match="SIZE must be at least 256"):
        envcontext("SIZE", 32_768)
    monkeypatch.setenv("SIZE", "4096")
    assert envcontext("SIZE", 32_768) == 4096
