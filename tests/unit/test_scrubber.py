"""The API-key scrubber (`chat.upstream.Scrubber`) on events in memory: keys cut at every offset.

The key reaching the scrubber through a real upstream (HTTP error bodies, every event field) is
tested in tests/test_upstream_client.py and tests/test_security.py.
"""

import itertools

from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from chat.upstream import (
    HOLD_FROM,
    REDACTED,
    ReasoningDelta,
    ReasoningDone,
    RefusalDelta,
    ResponseFinished,
    ResponseStarted,
    Scrubber,
    TextDelta,
    TextDone,
)

KEY = "sk-test-secret-key"


def scrub_deltas(secret, deltas, stream=TextDelta):
    """What a Scrubber lets through of `deltas` and then the end of the stream, joined."""
    scrubber = Scrubber(secret)
    passed = [event for delta in deltas for event in scrubber.events(stream(delta))]
    passed += scrubber.events(ResponseFinished("completed"))[:-1]
    return "".join(event.delta for event in passed), passed


def test_a_key_split_across_two_or_three_deltas_at_any_offset_is_blanked_out():
    """At most the key's first HOLD_FROM - 1 characters go out before it is recognised."""
    for first in range(1, len(KEY)):
        for second in range(first, len(KEY) + 1):
            deltas = [f"before {KEY[:first]}", KEY[first:second], f"{KEY[second:]} after"]
            # What went out before the text held back reached HOLD_FROM characters of the key.
            shown = KEY[:second] if second < HOLD_FROM else KEY[:first] if first < HOLD_FROM else ""
            for kind in (TextDelta, RefusalDelta, ReasoningDelta):
                text, passed = scrub_deltas(KEY, deltas, kind)
                assert text == f"before {shown}{REDACTED} after"
                assert all(KEY[:HOLD_FROM] not in event.delta for event in passed)


def test_a_delta_ending_like_the_start_of_the_key_is_not_delayed():
    """ "s" and "sk" end many words: they go out with their delta, not with the next one."""
    for delta in ("words", "a task", "the disk"):
        assert [event.delta for event in Scrubber(KEY).events(TextDelta(delta))] == [delta]
    assert Scrubber(KEY).events(TextDelta("see sk-")) == [TextDelta("see ")], "from three on, it waits"


def test_held_back_text_that_does_not_become_the_key_is_let_go_unchanged():
    deltas = ["a s", "k-", "very", " no. ", KEY[:3], "!", " end ", KEY[:5]]
    text, passed = scrub_deltas(KEY, deltas)
    assert text == "".join(deltas)
    assert passed[-1].delta == KEY[:5], "the tail held at the end goes out before the terminal event"
    # Without a key to look for, deltas pass one for one.
    assert [event.delta for event in scrub_deltas("", deltas)[1]] == deltas


def test_a_stream_that_breaks_off_in_the_middle_of_the_key_does_not_let_most_of_it_out():
    text, _ = scrub_deltas(KEY, ["cut ", KEY[: len(KEY) - 1]])
    assert text == f"cut {REDACTED}"
    text, _ = scrub_deltas(KEY, ["short ", KEY[:3]])
    assert text == f"short {KEY[:3]}", "a few characters that open the key are prose more often than not"


def test_a_new_reasoning_part_lets_the_held_text_go_with_its_own_part():
    scrubber = Scrubber(KEY)
    passed = scrubber.events(ReasoningDelta(f"one {KEY[:5]}", 0, 0))
    passed += scrubber.events(ReasoningDelta("two", 0, 1))
    assert [(event.delta, event.part_index) for event in passed] == [("one ", 0), (KEY[:5], 0), ("two", 1)]


def test_every_string_of_an_event_is_scrubbed_keys_included():
    scrubber = Scrubber(KEY)
    event = {"type": "x", "id": f"resp_{KEY}", KEY: [KEY, {"deep": f"a{KEY}b", "n": 3}], "ok": True}
    assert scrubber.value(event) == {
        "type": "x",
        "id": f"resp_{REDACTED}",
        REDACTED: [REDACTED, {"deep": f"a{REDACTED}b", "n": 3}],
        "ok": True,
    }


@hypothesis_settings(max_examples=300, deadline=None)
@given(
    secret=st.text(alphabet="abcdefghijk-0123456789", min_size=6, max_size=30),
    pieces=st.lists(st.integers(0, 4), max_size=12),
    cuts=st.lists(st.integers(0, 500), max_size=12),
)
def test_no_way_of_cutting_a_text_lets_the_key_through(secret, pieces, cuts):
    """Texts made of the key, its prefixes and suffixes and other words, cut anywhere."""
    vocabulary = [secret, secret[: len(secret) // 2], secret[len(secret) // 3 :], " x ", secret[:1]]
    text = "".join(vocabulary[piece] for piece in pieces)
    points = sorted({min(cut, len(text)) for cut in cuts} | {0, len(text)})
    deltas = [text[start:end] for start, end in itertools.pairwise(points)]
    scrubbed, _ = scrub_deltas(secret, deltas)
    assert secret not in scrubbed
    if secret not in text:
        # Nothing to blank out: all of it arrives, but a large piece of the key left open at the end.
        assert scrubbed == text or (scrubbed.endswith(REDACTED) and text.startswith(scrubbed[: -len(REDACTED)]))


def test_a_key_cut_into_single_characters_is_blanked_out_in_every_stream():
    deltas = ["see ", *KEY, " here"]
    for kind in (TextDelta, RefusalDelta, ReasoningDelta):
        text, passed = scrub_deltas(KEY, deltas, kind)
        assert text == f"see {KEY[: HOLD_FROM - 1]}{REDACTED} here"
        assert all(KEY[:HOLD_FROM] not in event.delta for event in passed)


def test_a_key_cut_at_every_offset_within_one_chunk_of_text_is_blanked_out():
    """The key cut in two at each offset, with the text around it cut at each offset too."""
    text = f"one {KEY} two {KEY}"
    starts = [text.index(KEY), text.rindex(KEY)]
    for point in range(len(text) + 1):
        # A cut less than HOLD_FROM characters into a key lets those characters out, and no more.
        shown = [KEY[: point - start] if 0 < point - start < HOLD_FROM else "" for start in starts]
        scrubbed, _ = scrub_deltas(KEY, [text[:point], text[point:]])
        assert scrubbed == f"one {shown[0]}{REDACTED} two {shown[1]}{REDACTED}", point


def test_a_done_event_releases_the_held_text_of_its_own_stream_only():
    scrubber = Scrubber(KEY)
    passed = scrubber.events(TextDelta(f"text {KEY[:4]}"))
    passed += scrubber.events(ReasoningDelta(f"thought {KEY[:4]}"))
    passed += scrubber.events(TextDone(f"text {KEY[:4]}"))
    assert passed == [TextDelta("text "), ReasoningDelta("thought "), TextDelta(KEY[:4]), TextDone(f"text {KEY[:4]}")]
    assert scrubber.events(ReasoningDone("thought")) == [ReasoningDelta(KEY[:4]), ReasoningDone("thought")]


def test_events_other_than_deltas_pass_as_they_are():
    scrubber = Scrubber(KEY)
    started = ResponseStarted("resp_1", "m")
    assert scrubber.events(started) == [started]
    assert scrubber.flush() == []
    assert scrubber.events(ResponseFinished("completed")) == [ResponseFinished("completed")]


def test_text_is_scrubbed_wherever_the_key_is_and_left_alone_without_one():
    assert Scrubber(KEY).text(f"{KEY}{KEY} and {KEY}.") == f"{REDACTED}{REDACTED} and {REDACTED}."
    assert Scrubber(KEY).text("sk-test only") == "sk-test only"
    assert Scrubber("").text(KEY) == KEY
    assert Scrubber("").value({"a": [KEY]}) == {"a": [KEY]}


def test_decoded_json_is_scrubbed_however_the_key_is_escaped_in_it():
    import json

    for secret in (KEY, "sk/with\\slash", 'sk"quote'):
        scrubber = Scrubber(secret)
        event = {"type": "response.output_text.delta", "delta": f"the key {secret} here", secret: secret}
        escaped_u = json.dumps(event, ensure_ascii=True).replace("k", "\\u006b")
        for data in (json.dumps(event), escaped_u, json.dumps(event).replace("/", "\\/")):
            assert secret not in json.dumps(scrubber.decoded(data)), data
            decoded = scrubber.decoded(data)
            assert decoded["delta"] == f"the key {REDACTED} here" and decoded[REDACTED] == REDACTED
        # Text that cannot hold the key comes back as decoded, escapes and all.
        assert scrubber.decoded('{"delta": "line\\nbreak"}') == {"delta": "line\nbreak"}


def test_a_delta_that_passes_unchanged_is_the_event_itself():
    scrubber = Scrubber(KEY)
    event = TextDelta("nothing secret")
    assert scrubber.events(event)[0] is event
    held = TextDelta("then sk-t")
    assert scrubber.events(held) == [TextDelta("then ")], "the start of the key waits"
