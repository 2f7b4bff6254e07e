"""The Open Responses objects and stream events of one local answer, complete per the schema."""

import json
import secrets
import time

# A delta's encoded text and its padding fill a whole number of these characters (see obfuscation).
PADDING_BLOCK = 32


def new_id(prefix):
    return f"{prefix}_{secrets.token_hex(24)}"


def obfuscation(text):
    """Random characters that bring a delta's encoded text to a whole number of PADDING_BLOCKs.

    The specification's `stream_options.include_obfuscation`, on unless a client turns it off: over
    an encrypted connection the size of each event would otherwise tell an observer the length of
    each token, from which text can be guessed. Most tokens are shorter than one block.
    """
    length = PADDING_BLOCK - len(json.dumps(text)) % PADDING_BLOCK
    return secrets.token_urlsafe(length)[:length]


class ResponseEvents:
    """Builds the event sequence of one response: call the methods in stream order.

    Every event carries `type` and a contiguous `sequence_number` from 0; every response snapshot
    carries all the fields the specification requires.
    """

    def __init__(self, request):
        self.request = request
        self.response_id = new_id("resp")
        self.item_id = new_id("msg")
        self.created_at = int(time.time())
        self.sequence = 0
        self.text = ""

    def _event(self, kind, **fields):
        event = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return event

    def _part_event(self, kind, **fields):
        """An event about the answer's one text part: output item 0, content part 0."""
        return self._event(kind, item_id=self.item_id, output_index=0, content_index=0, **fields)

    def response(self, status, *, usage=None, error=None, incomplete_reason=None):
        finished = status in ("completed", "incomplete", "failed")
        request = self.request
        output = []
        if finished and status != "failed":
            output.append(self.item("completed" if status == "completed" else "incomplete"))
        return {
            "id": self.response_id,
            "object": "response",
            "created_at": self.created_at,
            "completed_at": int(time.time()) if status == "completed" else None,
            "status": status,
            "incomplete_details": {"reason": incomplete_reason} if incomplete_reason else None,
            "model": request.model,
            "previous_response_id": None,
            "instructions": request.instructions,
            "output": output,
            "error": error,
            # As request.py accepted them: the fixed values are the only ones it accepts.
            "tools": [],
            "tool_choice": request.tool_choice,
            "truncation": "disabled",
            "parallel_tool_calls": request.parallel_tool_calls,
            "text": self.text_field(),
            "top_p": request.top_p,
            "presence_penalty": 0.0,
            "frequency_penalty": 0.0,
            "top_logprobs": 0,
            "temperature": request.temperature,
            "reasoning": request.reasoning,
            "usage": usage,
            "max_output_tokens": request.max_output_tokens,
            "max_tool_calls": request.max_tool_calls,
            "store": False,
            "background": False,
            "service_tier": "default",
            "metadata": request.metadata,
            "safety_identifier": request.safety_identifier,
            "prompt_cache_key": request.prompt_cache_key,
        }

    def text_field(self):
        text = {"format": {"type": "text"}}
        if self.request.verbosity:
            text["verbosity"] = self.request.verbosity
        return text

    def part(self):
        return {"type": "output_text", "text": self.text, "annotations": [], "logprobs": []}

    def item(self, status):
        content = [self.part()] if status != "in_progress" else []
        return {"type": "message", "id": self.item_id, "status": status, "role": "assistant", "content": content}

    @staticmethod
    def usage(input_tokens, output_tokens):
        return {
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "total_tokens": input_tokens + output_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0},
        }

    # --- the stream, in order ---------------------------------------------------------------

    def queued(self):
        """While another generation holds the model: created as queued, then `response.queued`."""
        return [
            self._event("response.created", response=self.response("queued")),
            self._event("response.queued", response=self.response("queued")),
        ]

    def opening(self, after_queue=False):
        started = [] if after_queue else [self._event("response.created", response=self.response("in_progress"))]
        return started + [
            self._event("response.in_progress", response=self.response("in_progress")),
            self._event("response.output_item.added", output_index=0, item=self.item("in_progress")),
            self._part_event("response.content_part.added", part=self.part()),  # no text yet
        ]

    def delta(self, text):
        self.text += text
        padding = {"obfuscation": obfuscation(text)} if self.request.obfuscate else {}
        return self._part_event("response.output_text.delta", delta=text, logprobs=[], **padding)

    def closing(self, usage, incomplete_reason=None):
        status = "incomplete" if incomplete_reason else "completed"
        terminal = "response.incomplete" if incomplete_reason else "response.completed"
        return [
            self._part_event("response.output_text.done", text=self.text, logprobs=[]),
            self._part_event("response.content_part.done", part=self.part()),
            self._event("response.output_item.done", output_index=0, item=self.item(status)),
            self._event(terminal, response=self.response(status, usage=usage, incomplete_reason=incomplete_reason)),
        ]

    def failure(self, code, message, kind="server_error"):
        return [
            self._event("error", error={"type": kind, "code": code, "message": message, "param": None}),
            self._event("response.failed", response=self.response("failed", error={"code": code, "message": message})),
        ]
