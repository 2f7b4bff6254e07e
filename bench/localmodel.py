"""The local model (chat/localmodel) served by the site at /local/v1/responses: time to first
token and tokens per second, straight from the endpoint and through a websocket tab."""

import asyncio
import json
import statistics
import time

import requests

from bench.clients import AnswerRecord, WebsocketTab
from bench.report import Section, Table, fmt
from tests.services import manage

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


def token(env):
    """The endpoint's bearer token, from chat.localmodel.endpoint.local_token() with the site's SECRET_KEY."""
    output = manage(
        env, "shell", "-c", "from chat.localmodel.endpoint import local_token; print('TOKEN', local_token())"
    )
    return next(line.split()[1] for line in output.splitlines() if line.startswith("TOKEN "))


def installed(env):
    output = manage(env, "shell", "-c", "from chat.localmodel import runtime; print('INSTALLED', runtime.installed())")
    return "INSTALLED True" in output


def one_generation(base_url, bearer, model, max_tokens):
    http = requests.Session()
    http.trust_env = False
    body = {"model": model, "input": PROMPT, "stream": True, "max_output_tokens": max_tokens, "temperature": 0}
    began = time.monotonic()
    first = last = None
    usage = None
    with http.post(
        f"{base_url}/local/v1/responses",
        json=body,
        headers={"Authorization": f"Bearer {bearer}"},
        stream=True,
        timeout=300,
    ) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith(b"data: {"):
                continue
            event = json.loads(line[6:])
            if event["type"] == "response.output_text.delta":
                last = time.monotonic()
                first = first or last
            elif event["type"] in ("response.completed", "response.incomplete"):
                usage = event["response"].get("usage") or {}
    tokens = (usage or {}).get("output_tokens") or 0
    return {
        "first_token_s": (first - began) if first else None,
        "tokens": tokens,
        "tokens_per_s": (tokens - 1) / (last - first) if first and last and last > first and tokens > 1 else None,
        "total_s": time.monotonic() - began,
    }


async def through_site(server, cookie, model, timeout=300):
    tab = await WebsocketTab.open("127.0.0.1", server.port, f"sessionid={cookie}")
    try:
        record = AnswerRecord("local", 0)
        tab.pending = record
        record.send_ns = time.monotonic_ns()
        tab.send_json({"type": "chat.send", "conversation": None, "text": PROMPT, "model": model})
        deadline = time.monotonic() + timeout
        while not record.first_delta_ns and not record.site_done.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        if record.message_id and not record.site_done.is_set():
            tab.send_json({"type": "chat.stop", "message": record.message_id})  # the first token is all we time
        await asyncio.wait_for(record.site_done.wait(), 60)
        return (record.first_delta_ns - record.send_ns) / 1e9 if record.first_delta_ns else None, record.final_status
    finally:
        tab.close()


def section(cold, warm, site_first, site_status, max_tokens, settings):
    table = Table(["run", "time to first token s", "output tokens", "tokens / s", "total s"])
    table.rows.append(
        [
            "cold (loads the model)",
            fmt(cold["first_token_s"], 3),
            cold["tokens"],
            fmt(cold["tokens_per_s"], 1),
            fmt(cold["total_s"], 2),
        ]
    )
    for number, run in enumerate(warm, 1):
        table.rows.append(
            [
                f"warm {number}",
                fmt(run["first_token_s"], 3),
                run["tokens"],
                fmt(run["tokens_per_s"], 1),
                fmt(run["total_s"], 2),
            ]
        )
    first = statistics.median(run["first_token_s"] for run in warm)
    speed = statistics.median(run["tokens_per_s"] or 0 for run in warm)
    notes = [
        f"Through the site (websocket chat.send with the local model -> first message.delta at the tab): "
        f"{fmt(site_first, 3)} s (then stopped: {site_status or 'not finished'})."
    ]
    return Section(
        "Local model (SmolLM2-135M, llama.cpp)",
        method=(
            f"POST /local/v1/responses on the site itself, streamed, temperature 0, max_output_tokens {max_tokens}, "
            "with the bearer token local_token() derives from the site's SECRET_KEY. Tokens/s counts from the "
            "first delta to the last."
        ),
        settings=settings,
        tables=[table],
        checks=[],
        notes=[f"Warm median: first token in {fmt(first, 3)} s, {fmt(speed, 1)} tokens/s.", *notes],
    )
