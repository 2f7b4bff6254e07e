"""`daphne` with a count of the SQL statements the process executes, for the database benchmark.

    python -m bench.serve -b 127.0.0.1 -p 8000 chatsite.asgi:application

The same server as the `daphne` command, plus an execute wrapper on every database connection
that counts statements by their first word (SELECT, INSERT, UPDATE, DELETE, ...). SIGUSR1 writes
the counts so far as JSON to the file named by BENCH_QUERY_COUNTS.
"""

import collections
import json
import os
import signal
import sys
import threading

COUNTS = collections.Counter()
LOCK = threading.Lock()


def count_statement(execute, sql, params, many, context):
    kind = sql.lstrip().split(None, 1)[0].upper() if sql.strip() else "?"
    with LOCK:
        COUNTS[kind] += 1
    return execute(sql, params, many, context)


def instrument(sender, connection, **kwargs):
    if count_statement not in connection.execute_wrappers:
        connection.execute_wrappers.append(count_statement)


def write_counts(signal_number, frame):
    with LOCK:
        counts = dict(COUNTS)
    path = os.environ["BENCH_QUERY_COUNTS"]
    with open(f"{path}.tmp", "w") as file:
        json.dump(counts, file)
    os.replace(f"{path}.tmp", path)


def main():
    from daphne.cli import CommandLineInterface
    from django.db.backends.signals import connection_created

    connection_created.connect(instrument)
    signal.signal(signal.SIGUSR1, write_counts)
    CommandLineInterface().run(sys.argv[1:])


if __name__ == "__main__":
    main()
