"""The process runtime's accessor and its swap (chat/runtime.py): looking starts nothing."""

import asyncio
import threading

from chat import runtime as runtime_module
from chat.runtime import Runtime, current, install


def test_looking_at_the_runtime_where_none_was_built_starts_nothing():
    before = install(None)
    try:
        threads = {thread.ident for thread in threading.enumerate()}
        found = current()
        assert isinstance(found, Runtime)
        assert current() is found, "one runtime per process"
        assert found.worker is None
        assert found.open_sockets == {}
        assert {thread.ident for thread in threading.enumerate()} == threads, "no thread started"
    finally:
        install(before)


def test_install_swaps_the_runtime_and_hands_back_the_one_before(runtime):
    assert current() is runtime  # tests/conftest.py installs a fresh one per test
    other = Runtime()
    assert install(other) is runtime
    assert current() is other
    assert install(runtime) is other
    assert runtime_module.current() is runtime


def test_each_event_loop_has_one_relay(runtime):
    first, second = asyncio.new_event_loop(), asyncio.new_event_loop()
    try:
        assert runtime.relay_for(first) is runtime.relay_for(first)
        assert runtime.relay_for(first) is not runtime.relay_for(second)
        assert runtime.relay_for(first).loop is first
    finally:
        first.close()
        second.close()
