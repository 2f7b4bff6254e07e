"""Health endpoints for load balancers and service managers.

- `/healthz` (liveness): the process is up and serves requests. It touches nothing else, so a
  database or Redis outage never gets healthy processes restarted.
- `/readyz` (readiness): the database, the cache and the channel layer all answer, so this process
  can serve a chat. 200 with every check's result, or 503 naming what failed; a load balancer sends
  no traffic to a process that is not ready. While the bundled local model is offered but not
  ready yet (`make run` still installing it), the answer says so under `local_model`; the process
  is ready all the same, and that key goes once the model is.

Failures are reported by exception class only (details go to the log): these URLs are public and an
error text may name hosts or accounts.
"""

import asyncio
import logging
import uuid

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.core.cache import cache
from django.db import connection
from django.http import JsonResponse
from django.views.decorators.cache import never_cache

from chat import providers
from chat.localmodel import runtime

logger = logging.getLogger(__name__)

# Seconds each check may take; a dependency slower than this counts as down.
CHECK_TIMEOUT = 3.0


def healthz(request):
    return JsonResponse({"status": "ok"}, headers={"Cache-Control": "no-store"})


def check_database():
    # Django opens and recycles the connection around the request, as for any view (health
    # checks on reuse included): a stale connection is replaced before it gets here.
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()


def check_cache():
    key = f"chat:readyz:{uuid.uuid4().hex}"
    cache.set(key, "ok", 30)
    try:
        if cache.get(key) != "ok":
            raise RuntimeError("the cache did not return the value just stored")
    finally:
        cache.delete(key)


async def check_channel_layer():
    """A message to a fresh channel of this process comes back: the layer carries messages."""
    layer = get_channel_layer()
    if layer is None:
        raise RuntimeError("no channel layer is configured")
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "readyz.ping"})
    message = await layer.receive(channel)
    if message.get("type") != "readyz.ping":
        raise RuntimeError("the channel layer returned another message")


CHECKS = {
    # Blocking checks run off the event loop, so a hung dependency cannot stall it. The database is
    # used from the request's own thread, as a view uses it; the cache from a thread of its own,
    # so that a hung database does not hold up the cache's check.
    "database": sync_to_async(check_database),
    "cache": sync_to_async(check_cache, thread_sensitive=False),
    "channel_layer": check_channel_layer,
}


async def run_check(name, check):
    try:
        await asyncio.wait_for(check(), CHECK_TIMEOUT)
    except TimeoutError:
        logger.warning("Readiness check %s timed out after %s s", name, CHECK_TIMEOUT)
        return f"timeout after {CHECK_TIMEOUT:g} s"
    except Exception as error:
        # A dependency being down is expected now and then: one line, not a traceback per probe.
        logger.warning("Readiness check %s failed: %s: %s", name, type(error).__name__, error)
        return f"failed: {type(error).__name__}"
    return "ok"


def local_model_state():
    """The local model's state and sentence while it is offered but cannot answer, else None."""
    state = providers.local_state()
    if state is None or state is runtime.State.READY:
        return None
    return {"status": state.value, "message": runtime.SENTENCES[state]}


@never_cache
async def readyz(request):
    results = await asyncio.gather(*(run_check(name, check) for name, check in CHECKS.items()))
    checks = dict(zip(CHECKS, results, strict=True))
    failed = [name for name, result in checks.items() if result != "ok"]
    body = {"status": "unavailable" if failed else "ok", "checks": checks}
    if failed:
        body["failed"] = failed
    local_model = local_model_state()
    if local_model:
        body["local_model"] = local_model
    return JsonResponse(body, status=503 if failed else 200)
