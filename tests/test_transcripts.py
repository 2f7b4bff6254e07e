"""Recorded and constructed Open Responses streams (tests/data/transcripts) replayed end to end.

What is saved and sent must match the transcript's own terminal event, read here straight from the
file's JSON rather than through the client's parser. The client alone must read the same events
however the bytes are cut into HTTP chunks.
"""

import pytest

from chat.models import Message
from chat.upstream import UpstreamClient
from tests.upstream import TRANSCRIPTS, chunked, transcript, transcript_terminal
from tests.websocket import assert_no_groups_left, connect, receive_until

NAMES = sorted(path.name for path in TRANSCRIPTS.glob("*.sse"))


def test_every_shared_transcript_is_replayed():
    assert len(NAMES) >= 5, f"expected the transcripts in {TRANSCRIPTS}"


def expected_outcome(name):
    """What the site should store for a transcript, from its terminal event."""
    response = transcript_terminal(name)["response"]
    output = response["output"]
    text = "".join(
        part["text"]
        for item in output
        if item["type"] == "message"
        for part in item["content"]
        if part["type"] == "output_text"
    )
    reasoning = "\n\n".join(part["text"] for item in output if item["type"] == "reasoning" for part in item["summary"])
    usage = response["usage"]
    error = response["error"]
    return {
        "status": response["status"],
        "text": text,
        "reasoning": reasoning,
        "usage": usage
        and {
            "input_tokens": usage["input_tokens"],
            "output_tokens": usage["output_tokens"],
            "total_tokens": usage["total_tokens"],
            "cached_tokens": usage["input_tokens_details"]["cached_tokens"],
            "reasoning_tokens": usage["output_tokens_details"]["reasoning_tokens"],
        },
        "error": error and {"code": error["code"], "message": error["message"]},
        "incomplete_reason": (response.get("incomplete_details") or {}).get("reason", ""),
        "response_id": response["id"],
        "model": response["model"],
    }


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
@pytest.mark.parametrize("name", NAMES)
async def test_a_transcript_is_saved_and_sent_as_its_terminal_event_says(alice, upstream, worker, settings, name):
    settings.CHAT_SENDS_PER_MINUTE = 0
    expected = expected_outcome(name)
    upstream.queue(transcript(name))
    communicator, _, _ = await connect(alice)
    await communicator.send_json_to({"type": "chat.send", "conversation": None, "text": "Replay"})
    frames = await receive_until(communicator, "message.done")
    await communicator.disconnect()
    assert_no_groups_left()

    done = frames[-1]
    row = await Message.objects.aget(pk=done["message"])
    for key in ("status", "text", "reasoning", "usage", "error", "incomplete_reason"):
        assert getattr(row, key) == expected[key], key
        assert done[key] == expected[key], key
    assert row.response_id == expected["response_id"]
    assert row.model == done["model"] == expected["model"]
    # What streamed adds up to what was saved: the browser's live view matched the final one.
    streamed = {"message.delta": "", "message.reasoning.delta": ""}
    for frame in frames:
        if frame["type"] in streamed:
            streamed[frame["type"]] += frame["delta"]
    assert streamed == {"message.delta": expected["text"], "message.reasoning.delta": expected["reasoning"]}
    assert not await Message.objects.unfinished().aexists()


@pytest.mark.parametrize("size", [1, 7, 64, 1000])
@pytest.mark.parametrize("name", NAMES)
def test_the_client_reads_a_transcript_the_same_however_it_is_chunked(upstream, name, size):
    client = UpstreamClient(base_url=upstream.base_url, api_key="sk-test")
    question = [{"type": "message", "role": "user", "content": "Replay"}]
    upstream.queue(transcript(name), chunked(transcript(name), size))
    whole = list(client.stream_response("test-model", question))
    cut = list(client.stream_response("test-model", question))
    assert cut == whole
    assert whole[-1].status == transcript_terminal(name)["response"]["status"]
