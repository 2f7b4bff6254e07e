"""chatsite.sqlite_writer: a process's SQLite writers take turns on one lock, which every way out
of a write (commit, rollback, an error, a closed connection) gives back. On a database file of its
own, whichever database the suite runs on; the threads are real, each with its own connection."""

import threading

import pytest
from django.db import DEFAULT_DB_ALIAS, OperationalError, connections, transaction

ALIAS = "writers"


@pytest.fixture
def database(tmp_path, django_db_blocker):
    """Django's connections with one more SQLite database (one connection per thread, as Django
    has it), with a short busy timeout and a table to write."""
    configured = connections.configure_settings(
        {
            DEFAULT_DB_ALIAS: connections.settings[DEFAULT_DB_ALIAS],
            ALIAS: {"ENGINE": "chatsite.sqlite_writer", "NAME": str(tmp_path / "w.db"), "OPTIONS": {"timeout": 0.5}},
        }
    )
    connections.settings[ALIAS] = configured[ALIAS]
    with django_db_blocker.unblock():
        with connections[ALIAS].cursor() as cursor:
            cursor.execute("CREATE TABLE row (id INTEGER PRIMARY KEY, value TEXT)")
            cursor.execute("INSERT INTO row (id, value) VALUES (1, 'first')")
        yield connections
        connections[ALIAS].close()
    del connections[ALIAS]
    del connections.settings[ALIAS]


def in_thread(handler, work):
    """Run `work(connection)` on a thread of its own; its result or the exception it raised."""
    outcome = {}

    def run():
        try:
            outcome["result"] = work(handler[ALIAS])
        except Exception as error:
            outcome["error"] = error
        finally:
            handler[ALIAS].close()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    assert not thread.is_alive()
    return outcome


def write(value):
    def work(connection):
        with connection.cursor() as cursor:
            cursor.execute("UPDATE row SET value = %s WHERE id = 1", [value])

    return work


def read(connection):
    with connection.cursor() as cursor:
        cursor.execute("SELECT value FROM row WHERE id = 1")
        return cursor.fetchone()[0]


def test_while_a_transaction_writes_reads_go_on_and_other_writes_wait_their_turn(database):
    holder = database[ALIAS]
    with transaction.atomic(using=ALIAS):
        write("held")(holder)
        assert holder.holds_writer
        assert in_thread(database, read) == {"result": "first"}  # WAL: the last committed value
        waited = in_thread(database, write("too soon"))
        assert isinstance(waited["error"], OperationalError)
        assert "this process's other writers" in str(waited["error"])  # it never reached SQLite
    assert not holder.holds_writer
    assert in_thread(database, write("after")) == {"result": None}
    assert read(holder) == "after"


def test_every_way_out_of_a_write_gives_the_writer_back(database):
    connection = database[ALIAS]
    with pytest.raises(RuntimeError), transaction.atomic(using=ALIAS):
        write("rolled back")(connection)
        raise RuntimeError("the block failed")
    assert in_thread(database, write("after a rollback")) == {"result": None}

    with pytest.raises(OperationalError), transaction.atomic(using=ALIAS):
        with connection.cursor() as cursor:
            cursor.execute("UPDATE no_such_table SET value = 1")
    assert in_thread(database, write("after an error")) == {"result": None}

    with transaction.atomic(using=ALIAS):
        write("closed")(connection)
        connection.close()  # what a broken connection's clean-up does
    assert not connection.holds_writer
    assert in_thread(database, write("after a close")) == {"result": None}

    write("in autocommit")(connection)  # a write outside a transaction takes and gives back its turn
    assert in_thread(database, write("last")) == {"result": None}
    assert read(connection) == "last"
