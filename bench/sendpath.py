"""What a send costs before its answer reaches the worker, in one process, no server:
`python -m bench.sendpath [USERS] [--history H] [--profile TOP] [--sql]`.

USERS users, each with a conversation of H exchanges, on an SQLite file database with the
production settings (DJANGO_DEBUG=0; the send rate and a daily budget on, so that their reads
count). Each verb the send path runs is called once per user, in turn: a new conversation, a send
to an existing one, regenerate, edit, continue, and the session check a frame takes before it
acts. Printed per verb: process CPU per call (time.process_time: robust to a loaded machine,
unlike wall time) and the statements of a call (CaptureQueriesContext, the first call's; listed
with --sql). Then a cProfile of one more round of every verb, its top
TOP functions by own time. The script uses only the verbs' public calls, so the same command
runs against another checkout for an A/B.
"""

import argparse
import atexit
import cProfile
import io
import os
import pstats
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

FOLDER = tempfile.mkdtemp(prefix="bench-sendpath-")
atexit.register(shutil.rmtree, FOLDER, ignore_errors=True)
os.environ.update(
    DJANGO_SETTINGS_MODULE="chatsite.settings",
    DJANGO_DEBUG="0",
    DJANGO_HTTPS="0",
    DJANGO_SECRET_KEY="bench-secret-key-not-for-production-0123456789abcdefghijklmnopqrstuvwxyz",
    DJANGO_LOG_LEVEL="WARNING",
    DATABASE_URL=f"sqlite:///{Path(FOLDER) / 'db.sqlite3'}",
    OPENRESPONSES_BASE_URL="http://127.0.0.1:9/v1",
    OPENRESPONSES_API_KEY="sk-bench",
    OPENRESPONSES_MODELS="bench",
    LOCAL_MODEL_ENABLED="0",
    CHAT_GENERATED_TITLES="0",
    # On, as in production (where the default is 20 a minute), with room for this script's rounds.
    CHAT_SENDS_PER_MINUTE="1000",
    # A budget, so that the reservation reads today's spending as a budgeted account's send does.
    CHAT_DAILY_TOKEN_BUDGET=str(10**9),
    CHAT_MAX_OUTPUT_TOKENS="1000",
)
os.environ.pop("REDIS_URL", None)

import django  # noqa: E402

django.setup()

from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model  # noqa: E402
from django.contrib.sessions.backends.db import SessionStore  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402

from chat.authority import session_ending  # noqa: E402
from chat.models import Conversation, Message  # noqa: E402

WORKER_ID = uuid.uuid4()


class Account:
    """One user, its session and its conversation, with what the next verb acts on."""

    def __init__(self, number, history):
        self.user = get_user_model().objects.create(username=f"sender-{number}")
        session = SessionStore()
        session[SESSION_KEY] = str(self.user.pk)
        session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
        session[HASH_SESSION_KEY] = self.user.get_session_auth_hash()
        session.create()
        self.session_key = session.session_key
        stored = Conversation.objects.send(self.user, None, "The first question", worker_id=WORKER_ID)
        self.conversation = stored.conversation_id
        self.answered(stored)
        for number in range(history):
            self.answered(Conversation.objects.send(self.user, self.conversation, f"Question {number}"))
        self.sends = 0

    def answered(self, stored, status=Message.Status.COMPLETED):
        """The verb's answer ended (what its worker would have written), so the next verb may go."""
        Message.objects.filter(pk=stored.answer).update(status=status, text="An answer of a few words.")
        self.answer = stored.answer
        self.question = Message.objects.get(pk=stored.answer).parent_id

    def client_id(self):
        self.sends += 1
        return f"bench-{self.sends}"


def verbs():
    """(name, call(account) -> Stored or None, how its answer ends) for each step of the path."""
    return [
        ("session check", lambda account: session_ending(account.session_key, account.user.pk), None),
        (
            "send, new conversation",
            lambda account: Conversation.objects.send(
                account.user, None, "A new chat", client_id=account.client_id(), worker_id=WORKER_ID
            ),
            Message.Status.COMPLETED,
        ),
        (
            "send, existing conversation",
            lambda account: Conversation.objects.send(
                account.user, account.conversation, "Again", client_id=account.client_id(), worker_id=WORKER_ID
            ),
            Message.Status.COMPLETED,
        ),
        (
            "regenerate",
            lambda account: Conversation.objects.regenerate(
                account.user, account.answer, client_id=account.client_id(), worker_id=WORKER_ID
            ),
            Message.Status.COMPLETED,
        ),
        (
            "edit",
            lambda account: Conversation.objects.edit(
                account.user, account.question, "Edited", client_id=account.client_id(), worker_id=WORKER_ID
            ),
            # Stopped short, so that continue has something to go on from.
            Message.Status.INCOMPLETE,
        ),
        (
            "continue",
            lambda account: Conversation.objects.continue_answer(
                account.user, account.answer, client_id=account.client_id(), worker_id=WORKER_ID
            ),
            Message.Status.COMPLETED,
        ),
    ]


def measure(accounts, show_sql):
    """{verb: (CPU µs per call, statements of a call)}: the statements of the first call (its
    transaction's own included, as tests/test_model_verbs.py counts them; printed with
    show_sql), the CPU of the others, which run with no capture."""
    results = {}
    for name, call, ending in verbs():
        cpu, statements = 0.0, 0
        for index, account in enumerate(accounts):
            if index == 0:
                with CaptureQueriesContext(connection) as captured:
                    stored = call(account)
                statements = len(captured.captured_queries)
                if show_sql:
                    print(f"\n{name}: {statements} statements")
                    for query in captured.captured_queries:
                        print("   ", query["sql"][:160])
            else:
                started = time.process_time()
                stored = call(account)
                cpu += time.process_time() - started
            if ending is not None:
                account.answered(stored, ending)
        results[name] = (cpu / max(1, len(accounts) - 1) * 1e6, statements)
    return results


def profile(accounts, top):
    profiler = cProfile.Profile()
    for _, call, ending in verbs():
        for account in accounts:
            profiler.enable()
            stored = call(account)
            profiler.disable()
            if ending is not None:
                account.answered(stored, ending)
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out).strip_dirs()
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return out.getvalue()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("users", nargs="?", type=int, default=50)
    parser.add_argument("--history", type=int, default=4, help="exchanges in each conversation before")
    parser.add_argument("--profile", type=int, default=25, metavar="TOP", help="cProfile rows shown (0: none)")
    parser.add_argument("--sql", action="store_true", help="print the statements of each verb's first call")
    options = parser.parse_args(argv)
    call_command("migrate", verbosity=0)
    accounts = [Account(number, options.history) for number in range(options.users)]
    # One round first, not counted: imports, caches, prepared statements.
    measure(accounts[:2], show_sql=False)
    results = measure(accounts, options.sql)
    print(f"\n{options.users} users, {options.history} exchanges each before; SQLite file, DJANGO_DEBUG=0")
    print(f"{'verb':<30} {'CPU µs / call':>14} {'statements':>11}")
    for name, (cpu, statements) in results.items():
        print(f"{name:<30} {cpu:>14,.0f} {statements:>11}")
    total = sum(cpu for cpu, _ in results.values())
    print(f"{'all six':<30} {total:>14,.0f} {sum(s for _, s in results.values()):>11}")
    if options.profile:
        print(profile(accounts, options.profile))


if __name__ == "__main__":
    sys.exit(main())
