"""The database settings read from the environment: PostgreSQL's connection pool (docs/deploy.md)."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHOW = (
    "import json; from django.conf import settings; database = settings.DATABASES['default']; "
    "print(json.dumps({'max_age': database['CONN_MAX_AGE'], 'options': database.get('OPTIONS', {}), "
    "'engine': database['ENGINE']}))"
)


def database_settings(tmp_path, **variables):
    """The default database's settings as a server started with `variables` would have them."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("DATABASE_", "CHAT_"))}
    env |= {"DJANGO_SETTINGS_MODULE": "chatsite.settings", "DJANGO_SECRET_KEY_FILE": str(tmp_path / "key")}
    env |= variables
    done = subprocess.run([sys.executable, "-c", SHOW], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


POSTGRES = "postgres://chat:secret@db-host:5432/chat"


def test_the_pool_is_off_unless_asked_for(tmp_path):
    found = database_settings(tmp_path, DATABASE_URL=POSTGRES)
    assert "pool" not in found["options"] and found["max_age"] == 60


def test_the_pool_takes_its_sizes_and_gives_back_instead_of_keeping(tmp_path):
    found = database_settings(tmp_path, DATABASE_URL=POSTGRES, DATABASE_POOL="1", DATABASE_CONN_MAX_AGE="60")
    # Django's pool refuses persistent connections: closing a connection gives it back.
    assert found["max_age"] == 0
    assert found["options"]["pool"] == {"min_size": 2, "max_size": 16 + 4 + 6, "timeout": 30.0}
    sized = database_settings(
        tmp_path,
        DATABASE_URL=POSTGRES,
        DATABASE_POOL="yes",
        DATABASE_POOL_MIN_SIZE="1",
        DATABASE_POOL_MAX_SIZE="40",
        DATABASE_POOL_TIMEOUT="5",
    )
    assert sized["options"]["pool"] == {"min_size": 1, "max_size": 40, "timeout": 5.0}


def test_sqlite_has_no_pool_whatever_is_asked(tmp_path):
    found = database_settings(tmp_path, DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}", DATABASE_POOL="1")
    # Its connections persist as PostgreSQL's do without the pool (chatsite/settings.py: closing
    # the last connection checkpoints the WAL), and its writers take turns on one lock.
    assert "pool" not in found["options"] and found["max_age"] == 60
    assert found["engine"] == "chatsite.sqlite_writer"
