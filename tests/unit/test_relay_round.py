"""What one relay round hands to Redis (`chat.relay.Round`) and what an inbox gets back
(`decode_inbox`), without Redis: the round script joins an inbox's sections with newlines, and
each section comes back whole, in order, with its frames as they were encoded."""

import json

from chat import protocol
from chat.relay import (
    FINISHED_SNAPSHOT_TTL,
    SNAPSHOT_TTL,
    Round,
    decode_inbox,
    encode_section,
    followers_key,
    snapshot_keys,
)

ORIGIN = "0" * 32


def done(message_id):
    return protocol.frame_event(
        message_id, {"type": protocol.MESSAGE_DONE, "message": message_id, "status": "completed"}
    )


def test_sections_of_several_conversations_joined_as_the_script_joins_them_come_back_whole_and_in_order():
    awkward = 'line\nbreak "quoted"\t\\ and \u2028 é'
    first = [protocol.DeltaEvents("a1").event(seq, "text", f"{awkward}{seq}") for seq in (1, 2, 3)]
    second = [protocol.DeltaEvents("b1").event(1, "reasoning", awkward), done("b1")]
    published = b"\n".join(
        encode_section(group, events).encode()
        for group, events in (("chat.conversation.one", first), ("chat.conversation.two", second))
    )

    sections = decode_inbox(published)

    assert [group for group, _ in sections] == ["chat.conversation.one", "chat.conversation.two"]
    for (_, events), sent in zip(sections, (first, second), strict=True):
        assert [event["frame"] for event in events] == [event["frame"] for event in sent]
        assert [(event["type"], event["message"], event.get("seq")) for event in events] == [
            (event["type"], event["message"], event.get("seq")) for event in sent
        ]
        assert all("delta" not in event and "stream" not in event for event in events), "for the snapshot only"
    assert json.loads(sections[0][1][2]["frame"])["delta"] == f"{awkward}3"


def test_a_section_holds_one_line_per_frame_after_its_group_and_fields():
    events = [protocol.DeltaEvents("a1").event(seq, "text", "x\ny") for seq in (1, 2)]
    lines = encode_section("chat.conversation.one", events).split("\n")
    assert len(lines) == 2 + len(events)
    assert lines[0] == "chat.conversation.one"
    assert len(json.loads(lines[1])) == len(events)


def test_a_rounds_arguments_are_bytes_in_the_order_the_script_reads_them():
    round_ = Round()
    deltas = protocol.DeltaEvents("a1")
    round_.add("chat.conversation.one", deltas.event(1, "reasoning", "think "))
    round_.add("chat.conversation.one", deltas.event(2, "text", "say "))
    round_.add("chat.conversation.one", deltas.event(3, "text", "more"))
    round_.add("chat.conversation.two", done("b1"))

    keys, args = round_.script_arguments(ORIGIN)

    assert all(isinstance(value, bytes) for value in keys + args), "redis-py passes bytes through"
    seq_key, reasoning_key, _, text_key = (key.encode() for key in snapshot_keys("a1"))
    finished = [key.encode() for key in snapshot_keys("b1")]
    sets = [followers_key(f"chat.conversation.{name}").encode() for name in ("one", "two")]
    assert keys == [reasoning_key, text_key, seq_key, *finished, *sets]
    counts = [b"2", b"1", b"%d" % len(finished), b"%d" % SNAPSHOT_TTL, b"%d" % FINISHED_SNAPSHOT_TTL]
    assert args[:6] == [*counts, ORIGIN.encode()]
    assert args[6:9] == [b"think ", b"say more", b"3"], "each stream's text appended once, the last seq"
    sections = [decode_inbox(section) for section in args[9:]]
    assert [[(group, len(events))] for [(group, events)] in sections] == [
        [("chat.conversation.one", 3)],
        [("chat.conversation.two", 1)],
    ]
