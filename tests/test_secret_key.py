"""No secret key is committed: without DJANGO_SECRET_KEY each install generates its own, once.

The settings run in subprocesses, as a server start does, with the key file in a temporary folder.
"""

import ast
import os
import stat
import subprocess
import sys

import pytest

from chatsite import secret_key
from tests.services import ROOT, site_env

PRINT_KEY = "from django.conf import settings; print(settings.SECRET_KEY)"
PRINT_TOKEN = "from chat.localmodel.endpoint import local_token; print(local_token())"


def settings_env(key_file, **variables):
    return site_env(DJANGO_SECRET_KEY="", DJANGO_SECRET_KEY_FILE=key_file, LOCAL_MODEL_ENABLED="0", **variables)


def shell(env, command):
    return subprocess.run(
        [sys.executable, "-c", f"import django; django.setup(); {command}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("debug", ["1", "0"])
def test_a_first_start_generates_a_private_key_that_later_starts_read_back(tmp_path, debug):
    key_file = tmp_path / "var" / "secret_key"
    env = settings_env(key_file, DJANGO_DEBUG=debug, DJANGO_ALLOWED_HOSTS="127.0.0.1")
    first = shell(env, PRINT_KEY)
    assert first.returncode == 0, first.stderr
    key = first.stdout.strip()
    assert len(key) >= 50
    assert key_file.read_text().strip() == key
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
    assert shell(env, PRINT_KEY).stdout.strip() == key, "a later start reads the same key"
    # Another install has another key, and so another local model token.
    other = settings_env(tmp_path / "other" / "secret_key", DJANGO_DEBUG=debug, DJANGO_ALLOWED_HOSTS="127.0.0.1")
    assert shell(other, PRINT_KEY).stdout.strip() != key
    assert shell(other, PRINT_TOKEN).stdout.strip() != shell(env, PRINT_TOKEN).stdout.strip()


def test_a_key_set_in_the_environment_wins_and_no_file_is_written(tmp_path):
    key_file = tmp_path / "secret_key"
    env = {**settings_env(key_file), "DJANGO_SECRET_KEY": "k" * 60}
    assert shell(env, PRINT_KEY).stdout.strip() == "k" * 60
    assert not key_file.exists()


def test_processes_starting_at_once_end_with_one_key(tmp_path):
    """Eight processes are released together (each waits for a line on its stdin) and race to
    create the key: one file, one key, no temporary file left behind."""
    key_file = tmp_path / "var" / "secret_key"
    racer = (
        "import sys; from chatsite import secret_key; print('ready', flush=True); sys.stdin.readline(); "
        f"print(secret_key.load_or_create({str(key_file)!r}))"
    )
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", racer],
            cwd=ROOT,
            env=site_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(8)
    ]
    for process in processes:
        assert process.stdout.readline().strip() == "ready"
    for process in processes:
        process.stdin.write("go\n")
        process.stdin.flush()
    keys = set()
    for process in processes:
        output, errors = process.communicate(timeout=60)
        assert process.returncode == 0, errors
        keys.add(output.strip())
    assert len(keys) == 1
    assert keys == {key_file.read_text().strip()}
    assert os.listdir(key_file.parent) == ["secret_key"]


def test_threads_racing_in_one_process_end_with_one_key(tmp_path):
    import threading

    key_file = tmp_path / "secret_key"
    barrier = threading.Barrier(16)
    keys = []

    def race():
        barrier.wait()
        keys.append(secret_key.load_or_create(key_file))

    threads = [threading.Thread(target=race) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(keys) == 16 and len(set(keys)) == 1


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_a_key_file_other_accounts_can_read_is_refused(tmp_path, mode):
    key_file = tmp_path / "secret_key"
    key_file.write_text("x" * 60 + "\n")
    key_file.chmod(mode)
    for debug in ("1", "0"):
        result = shell(settings_env(key_file, DJANGO_DEBUG=debug, DJANGO_ALLOWED_HOSTS="127.0.0.1"), PRINT_KEY)
        assert result.returncode != 0
        assert f"The secret key file {key_file} can be read by other accounts (mode {mode:o})" in result.stderr
        assert "x" * 60 not in result.stdout + result.stderr


def test_a_location_where_no_key_can_be_written_is_a_clear_error(tmp_path):
    """Root writes anywhere a mode allows nothing, so the unwritable places here are a path under a
    regular file and a path in /proc."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    for key_file in (blocker / "secret_key", "/proc/1/secret_key"):
        result = shell(settings_env(key_file, DJANGO_DEBUG="0", DJANGO_ALLOWED_HOSTS="127.0.0.1"), PRINT_KEY)
        assert result.returncode != 0
        assert f"The secret key file {key_file} could not be created" in result.stderr
        assert "set DJANGO_SECRET_KEY, or DJANGO_SECRET_KEY_FILE" in result.stderr


def test_an_empty_or_short_key_file_is_refused(tmp_path):
    key_file = tmp_path / "secret_key"
    key_file.write_text("short\n")
    key_file.chmod(0o600)
    result = shell(settings_env(key_file), PRINT_KEY)
    assert result.returncode != 0
    assert "holds no usable key" in result.stderr


def test_the_settings_hold_no_secret_key_literal():
    """SECRET_KEY is assigned once, from the environment or the key file, never from a string."""
    tree = ast.parse((ROOT / "chatsite" / "settings.py").read_text())
    assignments = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign) and any(getattr(target, "id", None) == "SECRET_KEY" for target in node.targets)
    ]
    assert len(assignments) == 1
    strings = {node.value for node in ast.walk(assignments[0]) if isinstance(node, ast.Constant)}
    assert strings == {"DJANGO_SECRET_KEY"}, "only the variable's name, no key"
