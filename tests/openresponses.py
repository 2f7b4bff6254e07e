"""The Open Responses specification's schema as validators, and a reader of SSE bodies.

The schema is the vendored OpenAPI document (tests/data/openresponses-openapi.json, see
tests/data/README.md); the event types and their schemas are read from it, not listed by hand.
"""

import functools
import json
from pathlib import Path

import jsonschema
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SCHEMA = json.loads((Path(__file__).resolve().parent / "data" / "openresponses-openapi.json").read_text())
REGISTRY = Registry().with_resource(
    "urn:openresponses", Resource.from_contents(SCHEMA, default_specification=DRAFT202012)
)
SCHEMAS = SCHEMA["components"]["schemas"]
# What `POST /responses` may stream: one of these events per `data:` line.
STREAM_SCHEMA = "/paths/~1responses/post/responses/200/content/text~1event-stream/schema"


def _validator(schema):
    return jsonschema.Draft202012Validator(schema, registry=REGISTRY)


@functools.cache
def validator(name):
    """A validator of the component schema `name` (ResponseResource, ErrorPayload...)."""
    return _validator({"$ref": f"urn:openresponses#/components/schemas/{name}"})


STREAM_EVENT = _validator({"$ref": f"urn:openresponses#{STREAM_SCHEMA}"})
# Event type -> the name of its schema, for every event the specification lets a stream carry.
EVENT_SCHEMAS = {
    SCHEMAS[ref["$ref"].rsplit("/", 1)[1]]["properties"]["type"]["enum"][0]: ref["$ref"].rsplit("/", 1)[1]
    for ref in SCHEMA["paths"]["/responses"]["post"]["responses"]["200"]["content"]["text/event-stream"]["schema"][
        "oneOf"
    ]
}
# An HTTP error's body: the specification's error payload under "error", nothing else.
ERROR_BODY = _validator(
    {
        "type": "object",
        "required": ["error"],
        "additionalProperties": False,
        "properties": {"error": {"$ref": "urn:openresponses#/components/schemas/ErrorPayload"}},
    }
)


def validate_event(data):
    """One streamed event against the stream's union of event schemas (as the compliance suite
    checks them) and against the schema of its own type."""
    STREAM_EVENT.validate(data)
    validator(EVENT_SCHEMAS[data["type"]]).validate(data)


def read_events(response):
    """(event-line, data) pairs of an SSE body, and whether it ended with [DONE]."""
    events, done = [], False
    for block in response.text.split("\n\n"):
        if not block.strip():
            continue
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        if lines["data"] == "[DONE]":
            done = True
            continue
        assert not done, "nothing follows data: [DONE]"
        events.append((lines.get("event"), json.loads(lines["data"])))
    return events, done
