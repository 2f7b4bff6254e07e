"""Reading one answer's upstream events: deltas to the job's buffer, the rest kept for its end.

`Reading.apply(event)` takes each typed event of chat/upstream; the terminal one finishes the
answer with the outcome it reports (status, final texts, usage, error), which `outcome_of` reads.
"""

import dataclasses

from chat import protocol, upstream
from chat.models import Message

EMPTY_OUTPUT = "empty_output"
EMPTY_OUTPUT_SENTENCE = (
    "The model returned nothing: no text, refusal or reasoning. The conversation may be longer "
    "than the model can read; try a new chat or a shorter message."
)
FINAL_STATUS = {
    "completed": Message.Status.COMPLETED,
    "incomplete": Message.Status.INCOMPLETE,
    "failed": Message.Status.FAILED,
}


class Reading:
    def __init__(self, job):
        self.job = job
        self.text_done = {}  # (output_index, content_index) -> full text, from output_text.done
        self.reasoning_part = None  # (output_index, part index) of the last reasoning delta
        self.stream_error = None  # (code, sentence) of an `error` event
        self.upstream_queued = False
        self.response_id = ""
        self.model = ""

    def apply(self, event):
        """Apply one upstream event; True once it finished the answer. Events not named here
        (reasoning and refusal `done`) add nothing: the terminal response repeats them."""
        handler = self.handlers.get(type(event))
        return bool(handler and handler(self, event))

    def ids(self):
        """What the upstream named the response and the model, where it did."""
        named = {"response_id": self.response_id, "model": self.model}
        return {field: value for field, value in named.items() if value}

    def text_delta(self, event):
        self.job.add("text", event.delta)

    def refusal_delta(self, event):
        self.job.add("refusal", event.delta)

    def reasoning_delta(self, event):
        """A new summary part starts a new paragraph, as the final text has it."""
        if not event.delta:
            return
        part = (event.output_index, event.part_index)
        separator = "\n\n" if self.reasoning_part not in (None, part) else ""
        self.reasoning_part = part
        self.job.add("reasoning", separator + event.delta)

    def text_finished(self, event):
        self.text_done[(event.output_index, event.content_index)] = event.text

    def started(self, event):
        self.response_id = event.response_id or self.response_id
        self.model = event.model or self.model
        # The upstream may queue the request (the local model serves one at a time): say so.
        upstream_queued = event.status == "queued"
        if upstream_queued != self.upstream_queued:
            self.upstream_queued = upstream_queued
            status = Message.Status.QUEUED if upstream_queued else Message.Status.STREAMING
            self.job.publish(protocol.status_event(self.job.message_id, status))

    def error(self, event):
        self.stream_error = (event.code, event.message)

    def finished(self, event):
        self.response_id = event.response_id or self.response_id
        self.model = event.model or self.model
        status, fields = self.outcome_of(event)
        self.job.finish(status, **fields)
        return True

    def outcome_of(self, event):
        """(status, finish() fields) of the terminal event."""
        code, text = event.error_code, event.error_message
        if event.status == "failed":
            if not (code or text) and self.stream_error:
                code, text = self.stream_error
            code = code or "response_failed"
            text = text or "The API reported that the answer failed."
        status = FINAL_STATUS[event.status]
        final_texts = self.final_texts(event)
        said = self.job.said_anything() or any(final_texts.values())
        if status == Message.Status.COMPLETED and not said:
            # Some servers answer a prompt longer than the model reads with an empty success
            # (LiteLLM: completed, no output, usage 0/0/0). Shown as what it is, and findable.
            status, code, text = Message.Status.FAILED, EMPTY_OUTPUT, EMPTY_OUTPUT_SENTENCE
        fields = {"final_texts": final_texts, "error_code": code, "error_message": text}
        fields["incomplete_reason"] = event.incomplete_reason
        if event.usage is not None:
            fields |= dataclasses.asdict(event.usage)
        return status, fields

    def final_texts(self, event):
        """The upstream's own final texts where it sent them; the streamed ones stand otherwise.

        An empty final text does not wipe out streamed text: a lenient server may leave its
        terminal `output` bare, and the text the person watched arrive is then the best record.
        """
        texts = {}
        done = "".join(text for _, text in sorted(self.text_done.items()))
        if event.output_text or done:
            texts["text"] = event.output_text or done
        if event.reasoning_text:
            texts["reasoning"] = event.reasoning_text
        if event.refusal:
            texts["refusal"] = event.refusal
        return texts

    handlers = {
        upstream.TextDelta: text_delta,
        upstream.ReasoningDelta: reasoning_delta,
        upstream.RefusalDelta: refusal_delta,
        upstream.TextDone: text_finished,
        upstream.ResponseStarted: started,
        upstream.StreamError: error,
        upstream.ResponseFinished: finished,
    }
