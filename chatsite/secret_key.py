"""The site's secret key when DJANGO_SECRET_KEY is not set: generated once, kept in a private file.

No key is committed to the repository: a key in the source is everybody's key, and with it the
signed session cookies, password reset links and the local model's token (all derived from
SECRET_KEY) could be forged by anyone who read the code. Instead the first start generates a
random key and writes it to a file only this account can read (`var/secret_key` by default, git
ignored; DJANGO_SECRET_KEY_FILE to choose another path); every later start, and every other
process of the same machine, reads it back.

Creation is race-free: the key is written in full to a private temporary file, which is then
linked to its final name. `link()` fails when the name exists, so of two processes starting at
once exactly one creates the file, the other reads the winner's key, and nobody ever reads a
file half written.
"""

import os
import secrets
import stat
import tempfile
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

# What Django's deployment check asks of a key (security.W009): at least 50 characters.
KEY_BYTES = 50
MIN_LENGTH = 50
SET_IT = "set DJANGO_SECRET_KEY, or DJANGO_SECRET_KEY_FILE to a path this account can write"


def load_or_create(path):
    """The key kept at `path`, generated there first if there is none yet."""
    path = Path(path)
    try:
        return read(path)
    except (FileNotFoundError, NotADirectoryError):
        pass  # none yet, or nowhere to put one: creating it says which
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        create(path)
    except FileExistsError:
        if not path.parent.is_dir():
            raise _cannot_create(path, "a file stands where its folder should be") from None
        # Otherwise another process created it first: its key is the one to use.
    except OSError as error:
        raise _cannot_create(path, error.strerror or error) from None
    try:
        return read(path)
    except (FileNotFoundError, NotADirectoryError) as error:
        raise _cannot_create(path, error.strerror) from None


def _cannot_create(path, reason):
    return ImproperlyConfigured(f"The secret key file {path} could not be created ({reason}): {SET_IT}.")


def create(path):
    """Write a new random key to `path`, whose folder exists; FileExistsError if one is there."""
    key = secrets.token_urlsafe(KEY_BYTES)
    # mkstemp opens with O_CREAT | O_EXCL and mode 0600, whatever the umask.
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=".secret_key.")
    try:
        with os.fdopen(descriptor, "w") as file:
            file.write(key + "\n")
            file.flush()
            os.fsync(file.fileno())
        os.link(temporary, path)
    finally:
        os.unlink(temporary)


def read(path):
    """The key in `path`, after checking that no other account can read it."""
    try:
        with open(path) as file:
            mode = os.fstat(file.fileno()).st_mode
            if mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise ImproperlyConfigured(
                    f"The secret key file {path} can be read by other accounts (mode {stat.S_IMODE(mode):o}): "
                    f"`chmod 600 {path}`, or {SET_IT}."
                )
            key = file.read().strip()
    except (FileNotFoundError, NotADirectoryError, ImproperlyConfigured):
        raise
    except OSError as error:
        raise ImproperlyConfigured(
            f"The secret key file {path} could not be read ({error.strerror or error}): {SET_IT}."
        ) from None
    if len(key) < MIN_LENGTH:
        raise ImproperlyConfigured(
            f"The secret key file {path} holds no usable key (fewer than {MIN_LENGTH} characters): "
            f"delete it to have a new one generated, or {SET_IT}."
        )
    return key
