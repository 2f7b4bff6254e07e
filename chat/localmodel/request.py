"""Validation of `POST /responses` bodies for the local model, with the specification's errors."""

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


ROLES = {"user", "assistant", "system", "developer"}


def _text_of(content, where):
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise RequestError(400, f"{where}.content must be a string or a list of content parts.", param=where)
    texts = []
    for index, part in enumerate(content):
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise RequestError(400, f"{where}.content[{index}] must be an object with a type.", param=where)
        if part["type"] in ("input_text", "output_text", "text", "summary_text", "reasoning_text"):
            if not isinstance(part.get("text"), str):
                raise RequestError(400, f"{where}.content[{index}].text must be a string.", param=where)
            texts.append(part["text"])
        elif part["type"] == "refusal":
            texts.append(str(part.get("refusal") or ""))
        else:
            raise RequestError(
                400,
                f"{where}.content[{index}]: {part['type']} is not supported by this model.",
                param=where,
                code="unsupported_content",
            )
    return "".join(texts)


def _number(body, name, low, high, default):
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise RequestError(400, f"{name} must be a number from {low} to {high}.", param=name)
    return float(value)


def parse(body, known_models):
    """Check a decoded body; raise RequestError (400, 404) or return a ResponseRequest."""
    if not isinstance(body, dict):
        raise RequestError(400, "The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise RequestError(400, "model is required.", param="model", code="missing_required_parameter")
    if model not in known_models:
        raise RequestError(
            404, f"The model `{model}` does not exist.", param="model", code="model_not_found", type="not_found"
        )
    raw_input = body.get("input")
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
                raise RequestError(
                    400,
                    f"{where}: items of type {kind!r} are not supported by this model.",
                    param=where,
                    code="unsupported_item",
                )
            role = item.get("role")
            if role not in ROLES:
                raise RequestError(400, f"{where}.role must be one of {', '.join(sorted(ROLES))}.", param=where)
            messages.append(
                {"role": "system" if role == "developer" else role, "content": _text_of(item.get("content"), where)}
            )
    elif raw_input is not None:
        raise RequestError(400, "input must be a string or a list of items.", param="input")
    if not any(message["role"] == "user" for message in messages):
        raise RequestError(400, "input must contain at least one user message.", param="input")
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise RequestError(400, "instructions must be a string.", param="instructions")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError(400, "stream must be a boolean.", param="stream")
    max_output_tokens = body.get("max_output_tokens")
    if max_output_tokens is not None and (
        isinstance(max_output_tokens, bool) or not isinstance(max_output_tokens, int) or max_output_tokens < 16
    ):
        raise RequestError(
            400,
            "max_output_tokens must be an integer of at least 16.",
            param="max_output_tokens",
            code="integer_below_min_value",
        )
    metadata = body.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise RequestError(400, "metadata must be an object.", param="metadata")
    return ResponseRequest(
        model=model,
        messages=messages,
        instructions=instructions,
        stream=stream,
        max_output_tokens=max_output_tokens,
        temperature=_number(body, "temperature", 0, 2, 1.0),
        top_p=_number(body, "top_p", 0, 1, 1.0),
        metadata=metadata,
    )
