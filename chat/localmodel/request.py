"""Validation of `POST /responses` bodies for the local model, with the specification's errors.

The local model writes plain text, one answer at a time, and keeps nothing once it is sent. Every
field of the specification's request body (`CreateResponseBody`) is read here, and each is either
honoured, accepted because a plain-text answer already satisfies it (and echoed in the response),
or refused with 400 naming it: a client that asks for tools, reasoning, stored responses or a JSON
schema learns at once that it will not get them rather than receiving an answer that quietly lacks
them. A field the specification does not define is refused too (`unknown_parameter`), as the
reference API does. docs/openresponses.md has the table.
"""

from dataclasses import dataclass, field


class RequestError(Exception):
    """Answered as `{"error": {message, type, param, code}}` with an HTTP status."""

    def __init__(self, status, message, *, param=None, code=None, type="invalid_request_error"):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type

    def as_json(self):
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def unsupported(param, message, code="unsupported_parameter"):
    """A parameter this model cannot honour (`unsupported_parameter`), or one it honours with other
    values only (`unsupported_value`)."""
    return RequestError(400, message, param=param, code=code)


def invalid(param, message, code="invalid_value"):
    return RequestError(400, message, param=param, code=code)


# The top-level fields of the specification's CreateResponseBody; anything else is refused.
FIELDS = frozenset(
    {
        "model",
        "input",
        "previous_response_id",
        "include",
        "tools",
        "tool_choice",
        "metadata",
        "text",
        "temperature",
        "top_p",
        "presence_penalty",
        "frequency_penalty",
        "parallel_tool_calls",
        "stream",
        "stream_options",
        "background",
        "max_output_tokens",
        "max_tool_calls",
        "reasoning",
        "safety_identifier",
        "prompt_cache_key",
        "truncation",
        "instructions",
        "store",
        "service_tier",
        "top_logprobs",
    }
)
# The fields of the objects inside it, likewise.
NESTED_FIELDS = {
    "text": frozenset({"format", "verbosity"}),
    "reasoning": frozenset({"effort", "summary"}),
    "stream_options": frozenset({"include_obfuscation"}),
}


@dataclass
class ResponseRequest:
    model: str
    messages: list = field(default_factory=list)  # [{"role", "content"}] in chat-template form
    instructions: str | None = None
    stream: bool = False
    max_output_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    metadata: dict = field(default_factory=dict)
    # Accepted because a plain-text answer satisfies them, and echoed in the response object:
    obfuscate: bool = True  # stream_options.include_obfuscation (the specification's default)
    tool_choice: str = "auto"  # "auto" or "none": either way no tool is called, as there are none
    parallel_tool_calls: bool = False
    max_tool_calls: int | None = None
    verbosity: str | None = None  # "medium" (the model's default) when asked for
    reasoning: dict | None = None  # {"effort": None or "none", "summary": None} when sent
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None


ROLES = {"user", "assistant", "system", "developer"}
TEXT_PARTS = ("input_text", "output_text", "text", "summary_text", "reasoning_text")


def _text_of(content, where):
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise RequestError(400, f"{where}.content must be a string or a list of content parts.", param=where)
    texts = []
    for index, part in enumerate(content):
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise RequestError(400, f"{where}.content[{index}] must be an object with a type.", param=where)
        if part["type"] in TEXT_PARTS:
            if not isinstance(part.get("text"), str):
                raise RequestError(400, f"{where}.content[{index}].text must be a string.", param=where)
            texts.append(part["text"])
        elif part["type"] == "refusal":
            texts.append(str(part.get("refusal") or ""))
        else:
            # input_image, input_file: the model reads text only.
            raise RequestError(
                400,
                f"{where}.content[{index}]: {part['type']} is not supported by this model, which reads text only.",
                param=where,
                code="unsupported_content",
            )
    return "".join(texts)


def _messages(raw_input):
    messages = []
    if isinstance(raw_input, str):
        messages.append({"role": "user", "content": raw_input})
    elif isinstance(raw_input, list):
        for index, item in enumerate(raw_input):
            where = f"input[{index}]"
            if not isinstance(item, dict):
                raise RequestError(400, f"{where} must be an object.", param=where)
            kind = item.get("type", "message")
            if kind != "message":
                # function_call(_output), reasoning, compaction, item_reference: nothing this model
                # produces or could read back.
                raise RequestError(
                    400,
                    f"{where}: items of type {kind!r} are not supported by this model.",
                    param=where,
                    code="unsupported_item",
                )
            role = item.get("role")
            if role not in ROLES:
                raise RequestError(400, f"{where}.role must be one of {', '.join(sorted(ROLES))}.", param=where)
            # `id`, `status` and an assistant message's `phase` label the history; the text is what counts.
            messages.append(
                {"role": "system" if role == "developer" else role, "content": _text_of(item.get("content"), where)}
            )
    elif raw_input is not None:
        raise RequestError(400, "input must be a string or a list of items.", param="input")
    if not any(message["role"] == "user" for message in messages):
        raise RequestError(400, "input must contain at least one user message.", param="input")
    return messages


def _number(body, name, low, high, default):
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise RequestError(400, f"{name} must be a number from {low} to {high}.", param=name)
    return float(value)


def _integer(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _object(body, name):
    """`body[name]` as a dict ({} when absent or null), its keys checked against NESTED_FIELDS."""
    value = body.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise invalid(name, f"{name} must be an object.", code="invalid_type")
    for key in value:
        if key not in NESTED_FIELDS[name]:
            raise invalid(f"{name}.{key}", f"Unknown parameter: '{name}.{key}'.", code="unknown_parameter")
    return value


def _flag(body, name, supported):
    """A boolean field that this server honours with the value `supported` only."""
    value = body.get(name)
    if value is None:
        return supported
    if not isinstance(value, bool):
        raise invalid(name, f"{name} must be a boolean.", code="invalid_type")
    return value


def _short_string(body, name):
    value = body.get(name)
    if value is not None and (not isinstance(value, str) or len(value) > 64):
        raise invalid(name, f"{name} must be a string of at most 64 characters.")
    return value


def _metadata(body):
    metadata = body.get("metadata")
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise RequestError(400, "metadata must be an object.", param="metadata")
    if len(metadata) > 16 or any(
        len(key) > 64 or not isinstance(value, str) or len(value) > 512 for key, value in metadata.items()
    ):
        raise invalid(
            "metadata", "metadata holds at most 16 entries, keys of up to 64 characters, strings of up to 512."
        )
    return metadata


def _check_tools(body, model):
    """No tools: a text-only model calls none, and an answer that ignored them would look like a
    model that chose not to. An empty list, and the choices "auto" and "none", ask for nothing
    more than a text answer. Returns the tool choice to echo."""
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise invalid("tools", "tools must be a list.", code="invalid_type")
    if tools:
        raise unsupported("tools", f"The model `{model}` is text-only and cannot call tools: send no tools.")
    choice = body.get("tool_choice")
    if choice is None:
        return "auto"
    if choice in ("auto", "none"):
        return choice
    if choice == "required" or isinstance(choice, dict):
        raise unsupported("tool_choice", f"The model `{model}` cannot call tools: leave tool_choice out, or auto/none.")
    raise invalid("tool_choice", "tool_choice must be none, auto, required or an object.")


def _check_statelessness(body):
    """Nothing is kept once an answer is sent: no earlier response to build on, none to store, no
    background run to poll."""
    previous = body.get("previous_response_id")
    if previous is not None:
        if not isinstance(previous, str):
            raise invalid("previous_response_id", "previous_response_id must be a string.", code="invalid_type")
        # The specification's code for an id the server does not hold; here none is held.
        raise RequestError(
            400,
            f"Previous response with id '{previous[:100]}' not found: this server stores no responses. "
            "Send the whole conversation as input instead.",
            param="previous_response_id",
            code="previous_response_not_found",
        )
    if _flag(body, "store", False):
        raise unsupported(
            "store", "This server stores no responses: leave store out or set it to false.", "unsupported_value"
        )
    if _flag(body, "background", False):
        raise unsupported(
            "background", "This server has no background mode (nothing to poll): leave background out or false."
        )


def _check_sampling(body):
    """What llama.cpp is asked for here: no log probabilities, no penalties, one tier, no truncation."""
    include = body.get("include")
    if include is not None and not isinstance(include, list):
        raise invalid("include", "include must be a list.", code="invalid_type")
    for entry in include or []:
        if entry == "message.output_text.logprobs":
            raise unsupported("include", "This server returns no log probabilities.", "unsupported_value")
        # reasoning.encrypted_content: there is no reasoning to include, so the answer is as asked.
        if entry != "reasoning.encrypted_content":
            raise invalid("include", f"include: {str(entry)[:100]!r} is not a value of the specification.")
    top_logprobs = body.get("top_logprobs")
    if top_logprobs is not None and (not _integer(top_logprobs) or not 0 <= top_logprobs <= 20):
        raise invalid("top_logprobs", "top_logprobs must be an integer from 0 to 20.")
    if top_logprobs:
        raise unsupported("top_logprobs", "This server returns no log probabilities.", "unsupported_value")
    for name in ("presence_penalty", "frequency_penalty"):
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise invalid(name, f"{name} must be a number.", code="invalid_type")
        if value:
            words = name.replace("_", " ")
            raise unsupported(name, f"This model samples with no {words}: leave {name} out or 0.", "unsupported_value")
    truncation = body.get("truncation")
    if truncation == "auto":
        raise unsupported(
            "truncation",
            "This server never drops part of a conversation: one longer than the model's context fails with "
            "context_length_exceeded. Leave truncation out or disabled.",
            "unsupported_value",
        )
    if truncation not in (None, "disabled"):
        raise invalid("truncation", "truncation must be auto or disabled.")
    service_tier = body.get("service_tier")
    if service_tier in ("flex", "priority"):
        raise unsupported(
            "service_tier",
            "This server has one service tier: leave service_tier out, auto or default.",
            "unsupported_value",
        )
    if service_tier not in (None, "auto", "default"):
        raise invalid("service_tier", "service_tier must be auto, default, flex or priority.")


def _check_text(body, model):
    """Plain text in the model's one verbosity; returns the verbosity to echo."""
    text = _object(body, "text")
    text_format = text.get("format")
    if isinstance(text_format, dict) and text_format.get("type") in ("json_schema", "json_object"):
        raise unsupported(
            "text.format", f"The model `{model}` writes plain text only: it cannot keep to a JSON format."
        )
    if text_format is not None and not (isinstance(text_format, dict) and text_format.get("type") == "text"):
        raise invalid("text.format", "text.format must be an object of type text or json_schema.")
    verbosity = text.get("verbosity")
    if verbosity in ("low", "high"):
        raise unsupported(
            "text.verbosity", "This model has one verbosity: leave text.verbosity out or medium.", "unsupported_value"
        )
    if verbosity not in (None, "medium"):
        raise invalid("text.verbosity", "text.verbosity must be low, medium or high.")
    return verbosity


def _check_reasoning(body, model):
    """No reasoning: effort none (or unset) only; returns the reasoning object to echo."""
    reasoning = _object(body, "reasoning")
    if reasoning.get("effort") not in (None, "none"):
        raise unsupported(
            "reasoning.effort", f"The model `{model}` does not reason: leave reasoning.effort out or none."
        )
    if reasoning.get("summary") is not None:
        raise unsupported("reasoning.summary", f"The model `{model}` does not reason: there is nothing to summarise.")
    return {"effort": reasoning.get("effort"), "summary": None} if body.get("reasoning") is not None else None


def _accepted(body, model):
    """Everything but the prompt and the sampling numbers, checked: the ResponseRequest fields to set."""
    _check_statelessness(body)
    _check_sampling(body)
    max_tool_calls = body.get("max_tool_calls")
    if max_tool_calls is not None and (not _integer(max_tool_calls) or max_tool_calls < 1):
        raise invalid("max_tool_calls", "max_tool_calls must be an integer of at least 1.")
    return {
        "tool_choice": _check_tools(body, model),
        # No tools, so no call to run in parallel or to count: accepted as asked, and echoed.
        "parallel_tool_calls": _flag(body, "parallel_tool_calls", False),
        "max_tool_calls": max_tool_calls,
        "verbosity": _check_text(body, model),
        "reasoning": _check_reasoning(body, model),
        "obfuscate": _flag(_object(body, "stream_options"), "include_obfuscation", True),
        # Echoed: this server monitors nothing, and its one model keeps one context whatever the key.
        "safety_identifier": _short_string(body, "safety_identifier"),
        "prompt_cache_key": _short_string(body, "prompt_cache_key"),
    }


def parse(body, known_models):
    """Check a decoded body; raise RequestError (400, 404) or return a ResponseRequest."""
    if not isinstance(body, dict):
        raise RequestError(400, "The request body must be a JSON object.")
    unknown = sorted(str(name) for name in body if name not in FIELDS)
    if unknown:
        raise invalid(unknown[0], f"Unknown parameter: '{unknown[0][:100]}'.", code="unknown_parameter")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise RequestError(400, "model is required.", param="model", code="missing_required_parameter")
    if model not in known_models:
        raise RequestError(
            404, f"The model `{model}` does not exist.", param="model", code="model_not_found", type="not_found"
        )
    messages = _messages(body.get("input"))
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise RequestError(400, "instructions must be a string.", param="instructions")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError(400, "stream must be a boolean.", param="stream")
    max_output_tokens = body.get("max_output_tokens")
    if max_output_tokens is not None and (not _integer(max_output_tokens) or max_output_tokens < 16):
        raise RequestError(
            400,
            "max_output_tokens must be an integer of at least 16.",
            param="max_output_tokens",
            code="integer_below_min_value",
        )
    accepted = _accepted(body, model)
    return ResponseRequest(
        model=model,
        messages=messages,
        instructions=instructions,
        stream=stream,
        max_output_tokens=max_output_tokens,
        temperature=_number(body, "temperature", 0, 2, 1.0),
        top_p=_number(body, "top_p", 0, 1, 1.0),
        metadata=_metadata(body),
        **accepted,
    )
