"""Shared fixtures: personas, the loopback upstream, a fresh runtime per test and its worker."""

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission

from tests.outage import retries, short_busy_timeout  # noqa: F401  (fixtures for every test module)
from tests.upstream import UpstreamServer


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    """Real password hashing costs a second per user; tests do not need its strength."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup):
    """pytest-django's test databases, and at the end no connection left open in a helper thread.

    Async tests run their ORM calls in asgiref's one sync thread, which keeps its connection
    (CONN_MAX_AGE). PostgreSQL will not drop a test database while a connection to it is open.
    """
    yield
    from asgiref.sync import SyncToAsync
    from django.db import connections

    SyncToAsync.single_thread_executor.submit(connections.close_all).result(timeout=10)


@pytest.fixture(autouse=True)
def no_generated_titles(settings):
    """No model-written titles unless a test turns them on (`settings.CHAT_GENERATED_TITLES = True`,
    tests/test_titles.py): each would be one more upstream request after a first answer, taking
    the scenario a test queued for its next answer."""
    settings.CHAT_GENERATED_TITLES = False


@pytest.fixture(autouse=True)
def empty_cache():
    """Rate-limit counters and resume snapshots must not leak from one test into the next."""
    from django.core.cache import cache

    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def upstream(settings):
    """A real Open Responses SSE server on loopback, configured as the site's upstream."""
    server = UpstreamServer().start()
    settings.OPENRESPONSES_BASE_URL = server.base_url
    settings.OPENRESPONSES_API_KEY = "sk-test-secret-key"
    settings.OPENRESPONSES_MODELS = ["test-model", "other-model"]
    settings.OPENRESPONSES_TIMEOUT = 5.0
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def runtime():
    """A fresh process runtime for every test (chat/runtime.py), nothing started: open sockets,
    relays and the local model's service do not leak from one test into the next."""
    from chat import runtime as runtime_module

    fresh = runtime_module.Runtime()
    previous = runtime_module.install(fresh)
    yield fresh
    fresh.close()
    runtime_module.install(previous)


@pytest.fixture
def worker(settings, request, runtime):
    """The test's runtime with its stream worker started (4 threads, or `@pytest.mark.worker_threads(n)`)."""
    marker = request.node.get_closest_marker("worker_threads")
    settings.CHAT_WORKER_THREADS = marker.args[0] if marker else 4
    yield runtime.start_worker()
    runtime.close()


def make_user(username, **extra):
    return get_user_model().objects.create_user(username, f"{username}@example.com", "correct horse battery", **extra)


@pytest.fixture
def alice(db):
    return make_user("alice")


@pytest.fixture
def bob(db):
    return make_user("bob")


@pytest.fixture
def superuser(db):
    return make_user("root", is_staff=True, is_superuser=True)


@pytest.fixture
def reviewer(db):
    """Staff allowed to read transcripts, but not a superuser."""
    user = make_user("reviewer", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__in=["view_conversation", "view_message"]))
    return user


@pytest.fixture
def charlie(db):
    return make_user("charlie", is_staff=True)


@pytest.fixture(autouse=True)
def fresh_redis_receive_locks():
    """Each async test runs on an event loop of its own, closed at its end; a server has one loop
    for its whole life. channels_redis keeps one asyncio lock per receiving channel, released by a
    task it starts after each receive: a loop closed before that task ran leaves the lock taken,
    bound to the dead loop, and the next test's receive fails on it. Each test starts with new ones.
    """
    yield
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    if hasattr(layer, "receive_clean_locks"):
        layer.receive_clean_locks = type(layer.receive_clean_locks)()
