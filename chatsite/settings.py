"""Settings for the chat site.

Every knob is read from the environment through the small helpers below, which fail loudly on
malformed values. The defaults run out of the box on one machine: SQLite, the in-memory channel
layer and the local-memory cache. Setting REDIS_URL and DATABASE_URL scales out (docs/deploy.md).
"""

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from chatsite import secret_key

BASE_DIR = Path(__file__).resolve().parent.parent


def envstr(name, default=""):
    return os.environ.get(name, default)


def envbool(name, default):
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (1/0, true/false), got {value!r}")


def envnumber(name, default, kind=int):
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return kind(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a {kind.__name__}, got {value!r}") from None


def envlist(name, default):
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return list(default)
    return [item.strip() for item in value.split(",") if item.strip()]


# --- Core -----------------------------------------------------------------------------------

DEBUG = envbool("DJANGO_DEBUG", True)
# No key is ever committed: unset, one is generated on first start and kept in a file only this
# account can read, which every later start and every process of this machine reads back
# (chatsite/secret_key.py). Processes on several machines need the same key: set it, or point
# DJANGO_SECRET_KEY_FILE at shared storage.
SECRET_KEY_FILE = Path(envstr("DJANGO_SECRET_KEY_FILE") or BASE_DIR / "var" / "secret_key")
SECRET_KEY = envstr("DJANGO_SECRET_KEY") or secret_key.load_or_create(SECRET_KEY_FILE)

ALLOWED_HOSTS = envlist("DJANGO_ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = envlist("DJANGO_CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "daphne",
    # Django's admin on chat.admin_site.ChatAdminSite: throttled password forms (chat/admin_site.py).
    "chat.apps.ChatAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "channels",
    "chat",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "chat.security.ContentSecurityPolicyMiddleware",
]

ROOT_URLCONF = "chatsite.urls"
ASGI_APPLICATION = "chatsite.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "chat.context_processors.account_theme",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------------

DATABASES = {
    "default": dj_database_url.parse(
        envstr("DATABASE_URL") or f"sqlite:///{BASE_DIR / 'db.sqlite3'}",
        conn_max_age=envnumber("DATABASE_CONN_MAX_AGE", 60),
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Worker threads write while requests read: WAL lets readers go on during a write, and
    # IMMEDIATE transactions take the write lock up front instead of failing half-way.
    # Connections persist (DATABASE_CONN_MAX_AGE), as on PostgreSQL: the last connection to close
    # checkpoints the WAL into the database and deletes it (fsyncs, 10-25 ms on a small disk),
    # and the next one to open makes it again. Closed after every call, each database call of
    # a send (its session check, the verb, the claim) could pay that (docs/benchmarks.md).
    # This process's writers take turns on a lock of its own rather than in SQLite's busy
    # handler, which sleeps between tries (chatsite/sqlite_writer/base.py).
    DATABASES["default"]["ENGINE"] = "chatsite.sqlite_writer"
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
    }
    # Tests use a file too (one per test process), not SQLite's shared in-memory database, whose
    # table locks make concurrent worker threads fail instead of waiting.
    DATABASES["default"]["TEST"] = {"NAME": f"/tmp/chatsite-test-{os.getpid()}.sqlite3"}

if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql" and envbool("DATABASE_POOL", False):
    # psycopg's connection pool (Django's OPTIONS["pool"]): a thread that is done with its
    # connection hands it back instead of closing it, and the next one takes it without a new
    # connection (TCP, authentication, a backend process). Django's pool wants CONN_MAX_AGE 0:
    # "closing" is giving back. Each process opens at most DATABASE_POOL_MAX_SIZE connections;
    # a thread that finds none free waits up to DATABASE_POOL_TIMEOUT seconds (docs/deploy.md).
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": envnumber("DATABASE_POOL_MIN_SIZE", 2),
        "max_size": envnumber(
            "DATABASE_POOL_MAX_SIZE",
            envnumber("CHAT_WORKER_THREADS", 16) + envnumber("CHAT_SEND_THREADS", 4) + 6,
        ),
        "timeout": envnumber("DATABASE_POOL_TIMEOUT", 30.0, float),
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Channel layer and cache ----------------------------------------------------------------

REDIS_URL = envstr("REDIS_URL")
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                # A receive waits up to 5 s in BZPOPMIN; redis-py's own read timeout is 5 s too,
                # so an idle socket's receive failed and took its consumer down with it.
                "hosts": [{"address": REDIS_URL, "socket_timeout": 30}],
                "capacity": 1000,
                "expiry": 60,
            },
        }
    }
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "chatsite",
        }
    }
else:
    # Channels' own in-memory layer: only the rare account events (logout, session checks) go
    # through it; deltas go through the relay (chat/relay.py).
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer", "CONFIG": {"capacity": 1000}}}
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# --- Auth -----------------------------------------------------------------------------------

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# The throttle comes first: it counts or refuses every password check made with a request, then
# ModelBackend checks the password (chat/login_throttle.py). Sessions keep naming ModelBackend.
AUTHENTICATION_BACKENDS = [
    "chat.login_throttle.LoginThrottleBackend",
    "django.contrib.auth.backends.ModelBackend",
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "chat:home"
LOGOUT_REDIRECT_URL = "login"

# --- Internationalisation and static files --------------------------------------------------

LANGUAGE_CODE = "en-us"
TIME_ZONE = envstr("DJANGO_TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(envstr("DJANGO_STATIC_ROOT") or BASE_DIR / "staticfiles")
# "default" holds the uploads: the filesystem under MEDIA_ROOT, or a bucket ("Attachments" below).
STORAGES = {
    "default": {"BACKEND": "chat.storage.PrivateFileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
if DEBUG:
    # Serve straight from the source folders, so a fresh clone runs without collectstatic.
    WHITENOISE_USE_FINDERS = True
    WHITENOISE_AUTOREFRESH = True
else:
    # Production serves what `manage.py collectstatic` gathered in STATIC_ROOT, compressed and
    # under names carrying a hash of their content, which browsers may cache for good.
    STORAGES["staticfiles"] = {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"}

# --- HTTPS (docs/deploy.md) -----------------------------------------------------------------

# With DJANGO_DEBUG=0 the site is taken to be reached over HTTPS, and `manage.py check --deploy`
# reports nothing. DJANGO_HTTPS=0 serves it over plain HTTP (a local cluster, a closed network).
SERVED_OVER_HTTPS = envbool("DJANGO_HTTPS", not DEBUG)
BEHIND_TLS_PROXY = envbool("DJANGO_BEHIND_TLS_PROXY", False)
if BEHIND_TLS_PROXY:
    # A proxy terminates TLS and says so in X-Forwarded-Proto. Only safe when the proxy sets that
    # header itself, whatever the client sent (deploy/nginx.conf does).
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# Proxies in front of the processes that append the peer's address to X-Forwarded-For: the
# client's address is that many entries from the right (the login throttle counts clients by it).
# 0: the header is ignored and REMOTE_ADDR is the client, since a client could write the header.
TRUSTED_PROXY_COUNT = envnumber("DJANGO_TRUSTED_PROXY_COUNT", 1 if BEHIND_TLS_PROXY else 0)
if SERVED_OVER_HTTPS:
    SECURE_SSL_REDIRECT = True
    # Load balancers probe the processes directly, over plain HTTP.
    SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$"]
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = envnumber("DJANGO_HSTS_SECONDS", 365 * 24 * 3600)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = envbool("DJANGO_HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = envbool("DJANGO_HSTS_PRELOAD", True)

# --- Logging --------------------------------------------------------------------------------

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": envstr("DJANGO_LOG_LEVEL", "INFO")},
    "loggers": {"daphne": {"level": "WARNING"}},
}

# --- The upstream Open Responses API --------------------------------------------------------

OPENRESPONSES_DEFAULT_BASE_URL = "https://llm.onerouter.pro/v1"
OPENRESPONSES_BASE_URL = envstr("OPENRESPONSES_BASE_URL", OPENRESPONSES_DEFAULT_BASE_URL).rstrip("/")
OPENRESPONSES_API_KEY = envstr("OPENRESPONSES_API_KEY")
OPENRESPONSES_MODELS = envlist("OPENRESPONSES_MODELS", ["google/gemini-3-flash"])
OPENRESPONSES_TIMEOUT = envnumber("OPENRESPONSES_TIMEOUT", 60.0, float)
OPENRESPONSES_CONNECT_TIMEOUT = envnumber("OPENRESPONSES_CONNECT_TIMEOUT", 10.0, float)

# --- Chat behaviour -------------------------------------------------------------------------

# Longest user message accepted, in characters.
CHAT_MAX_MESSAGE_CHARS = envnumber("CHAT_MAX_MESSAGE_CHARS", 32_000)
# Largest websocket frame accepted from a browser, in bytes (a full message plus JSON escaping).
CHAT_MAX_FRAME_BYTES = envnumber("CHAT_MAX_FRAME_BYTES", 256 * 1024)
# Largest file a user may import (POST /import/), in bytes: the whole file is parsed in memory,
# which takes several times its size. A ChatGPT export of a long history runs to tens of MB.
CHAT_MAX_IMPORT_BYTES = envnumber("CHAT_MAX_IMPORT_BYTES", 32 * 1024 * 1024)
# Websockets one user may hold open in one server process (tabs, devices).
CHAT_MAX_SOCKETS_PER_USER = envnumber("CHAT_MAX_SOCKETS_PER_USER", 20)
# How often (seconds) an open websocket checks again that its session still lets it act. Every
# frame is checked anyway, and logout, password changes and deactivation close sockets at once;
# this bounds how long a socket that only listens outlives an expired or deleted session.
CHAT_SESSION_CHECK_INTERVAL = envnumber("CHAT_SESSION_CHECK_INTERVAL", 30.0, float)
if CHAT_SESSION_CHECK_INTERVAL <= 0:
    raise ImproperlyConfigured("CHAT_SESSION_CHECK_INTERVAL must be a positive number of seconds")
# Answers generated at once by this process; later ones wait in a queue and show as queued.
CHAT_WORKER_THREADS = envnumber("CHAT_WORKER_THREADS", 16)
# Threads for the database work of the sockets' sends (chat.send, regenerate, edit) and session
# checks, apart from asgiref's one thread where the sockets' other database calls queue. Each
# holds a database connection; on SQLite their writes take turns on the one write lock.
CHAT_SEND_THREADS = envnumber("CHAT_SEND_THREADS", 4)
# Deltas arriving faster than this window (seconds) are sent to browsers as one frame.
CHAT_FLUSH_INTERVAL = envnumber("CHAT_FLUSH_INTERVAL", 0.03, float)
# How often (seconds) a streaming answer's text so far is saved to the database.
CHAT_CHECKPOINT_INTERVAL = envnumber("CHAT_CHECKPOINT_INTERVAL", 1.0, float)
# How often (seconds) a server process marks itself alive, and after how long without a mark
# its unfinished answers are taken as interrupted.
CHAT_HEARTBEAT_INTERVAL = envnumber("CHAT_HEARTBEAT_INTERVAL", 5.0, float)
CHAT_HEARTBEAT_TIMEOUT = envnumber("CHAT_HEARTBEAT_TIMEOUT", 30.0, float)
# On: after the first answer of a conversation, the worker asks the same model for a short title
# (chat/answering/titles.py); the first words of the first message stay the title until then, and
# whenever that fails. The request's tokens count in the owner's usage and budget.
CHAT_GENERATED_TITLES = envbool("CHAT_GENERATED_TITLES", True)
# The most a title request may write (its max_output_tokens). A title of six words is about
# fifteen tokens; a reasoning model's thinking counts in it too, and one that thinks past it
# leaves the first words as the title.
CHAT_TITLE_MAX_OUTPUT_TOKENS = envnumber("CHAT_TITLE_MAX_OUTPUT_TOKENS", 200)
if CHAT_TITLE_MAX_OUTPUT_TOKENS < 16:
    raise ImproperlyConfigured("CHAT_TITLE_MAX_OUTPUT_TOKENS must be at least 16, the API's floor")
# The most tokens one answer may write, sent upstream as max_output_tokens (0: the model's own
# limit, and nothing is sent unless a daily budget caps the answer). With a budget an answer may
# also write at most the rest of it; a strict API that refuses a max_output_tokens above its
# model's limit needs this set to that limit.
CHAT_MAX_OUTPUT_TOKENS = envnumber("CHAT_MAX_OUTPUT_TOKENS", 0)
# How long (seconds) an answer thread keeps trying to save an answer while the database is
# unavailable (locked, restarting); then the process's maintenance loop goes on trying, and the
# thread serves the next answer.
CHAT_DATABASE_RETRY_SECONDS = envnumber("CHAT_DATABASE_RETRY_SECONDS", 300.0, float)

# --- Accounts and limits --------------------------------------------------------------------

# Tokens a user may spend per day (0: unlimited); staff can override it per user in the admin.
CHAT_DAILY_TOKEN_BUDGET = envnumber("CHAT_DAILY_TOKEN_BUDGET", 0)
# Tokens held for an answer being written, besides its input (estimated from its characters),
# until its real figure replaces them, where the account has no budget. With a budget an answer
# holds what it may write (its max_output_tokens: the rest of the budget, at most the model's
# limit), so that parallel sends stay within the budget but for their input.
CHAT_RESERVED_ANSWER_TOKENS = envnumber("CHAT_RESERVED_ANSWER_TOKENS", 1000)
# Messages (sends, edits, regenerations) a user may send in any 60 seconds (0: unlimited).
CHAT_SENDS_PER_MINUTE = envnumber("CHAT_SENDS_PER_MINUTE", 20)
# Failed password checks within a sliding window (seconds) after which further attempts wait, on
# every login and password-change form (chat/login_throttle.py): LOGIN_FAILURE_LIMIT for one
# account from one client, LOGIN_CLIENT_FAILURE_LIMIT for one client whatever the accounts.
LOGIN_FAILURE_LIMIT = envnumber("LOGIN_FAILURE_LIMIT", 5)
LOGIN_CLIENT_FAILURE_LIMIT = envnumber("LOGIN_CLIENT_FAILURE_LIMIT", 20)
LOGIN_FAILURE_WINDOW = envnumber("LOGIN_FAILURE_WINDOW", 15 * 60)
# Anyone may create an account at /accounts/signup/ when on; otherwise staff create accounts.
CHAT_SIGNUP_OPEN = envbool("CHAT_SIGNUP_OPEN", False)
# Off: nobody, not even superusers, can read transcripts in the admin (usage figures stay).
CHAT_STAFF_CAN_READ_TRANSCRIPTS = envbool("CHAT_STAFF_CAN_READ_TRANSCRIPTS", True)
# Off: no share links are made or opened (their pages answer 404), and the Share control is gone.
CHAT_SHARING = envbool("CHAT_SHARING", True)

EMAIL_BACKEND = envstr("EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
EMAIL_HOST = envstr("EMAIL_HOST", "localhost")
EMAIL_PORT = envnumber("EMAIL_PORT", 25)
EMAIL_HOST_USER = envstr("EMAIL_HOST_USER")
EMAIL_HOST_PASSWORD = envstr("EMAIL_HOST_PASSWORD")
EMAIL_USE_TLS = envbool("EMAIL_USE_TLS", False)
DEFAULT_FROM_EMAIL = envstr("DEFAULT_FROM_EMAIL", "chat@localhost")

# --- Models -----------------------------------------------------------------------------------

# A remote API counts as configured once its base URL or key is set; otherwise the site chats
# with the bundled local model alone (chat/localmodel), offline. See chat/providers.py.
LOCAL_MODEL_ENABLED = envbool("LOCAL_MODEL_ENABLED", True)
LOCAL_MODEL_NAME = envstr("LOCAL_MODEL_NAME", "smollm2-135m")
LOCAL_MODEL_LABEL = "Local model: SmolLM2-135M, offline"
# Tokens the local model reads at most (prompt and answer together), and the threads it uses.
LOCAL_MODEL_CONTEXT = envnumber("LOCAL_MODEL_CONTEXT", 2048)
LOCAL_MODEL_THREADS = envnumber("LOCAL_MODEL_THREADS", 0)
# Sampling temperature of the local model's answers (0: the same answer every time).
LOCAL_MODEL_TEMPERATURE = envnumber("LOCAL_MODEL_TEMPERATURE", 0.7, float)
# Requests over HTTP (/local/v1/responses) that may wait while the model is busy; more are refused
# with 503 and Retry-After. The site's own answers reach the model in-process and are bounded by
# CHAT_WORKER_THREADS instead.
LOCAL_MODEL_QUEUE = envnumber("LOCAL_MODEL_QUEUE", 4)
# Another server whose /local/v1 endpoint the site's worker uses; empty: this process's own model,
# called in-process (chat/localmodel/transport.py).
LOCAL_MODEL_BASE_URL = envstr("LOCAL_MODEL_BASE_URL").rstrip("/")
# What scripts/local-model.sh says while it installs the local model's packages in the background
# for `make run` (held locked while it runs; "failed" if it failed). See chat/localmodel/runtime.py.
LOCAL_MODEL_INSTALL_STATUS = Path(envstr("LOCAL_MODEL_INSTALL_STATUS") or BASE_DIR / "var/local-model-install.status")

# --- Attachments (chat/attachments.py, chat/uploads.py) ---------------------------------------


def envcapabilities(name, default):
    """`model=images+files,other-model=` as {model: [capability, ...]}; an empty list is text only."""
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return dict(default)
    found = {}
    for entry in value.split(","):
        model, equals, capabilities = entry.strip().partition("=")
        taken = [item.strip() for item in capabilities.split("+") if item.strip()]
        if not equals or not model.strip() or set(taken) - {"images", "files"}:
            raise ImproperlyConfigured(f"{name} entries look like model=images+files, got {entry!r}")
        found[model.strip()] = taken
    return found


def s3_storage(bucket, endpoint_url=None, region=None, access_key=None, secret_key=None, prefix=""):
    """The storage of uploads in an S3 bucket (tests build theirs with it too)."""
    return {
        "BACKEND": "chat.storage.PrivateS3Storage",
        "OPTIONS": {
            "bucket_name": bucket,
            # None: the provider's own endpoint for the region (boto3's default).
            "endpoint_url": endpoint_url or None,
            "region_name": region or None,
            # None: boto3's own chain (AWS_* variables, a shared credentials file, an instance role).
            "access_key": access_key or None,
            "secret_key": secret_key or None,
            # A folder of the bucket for this site's objects, when the bucket is shared.
            "location": prefix,
            "default_acl": "private",
            # Uploads are named by their id, so an existing name is a bug: keep both rather than
            # overwrite (one HEAD request per upload).
            "file_overwrite": False,
            # Every object is stored as opaque bytes to download, never as the browser's claim of
            # its type: were one ever reached by URL, the store would not serve it as a page.
            "object_parameters": {"ContentType": "application/octet-stream", "ContentDisposition": "attachment"},
            # A file being read is kept in memory up to this size, then in a temporary file: a
            # download of a large upload does not hold all of it in memory.
            "max_memory_size": 2 * 1024 * 1024,
        },
    }


# Uploaded files are stored through Django's storage API: this folder by default. Nothing serves
# it directly: files reach their owner only through /uploads/<id>/ (MEDIA_URL is not routed).
MEDIA_ROOT = Path(envstr("DJANGO_MEDIA_ROOT") or BASE_DIR / "var" / "media")
# Or a bucket of any S3-compatible store (django-storages), shared by every process on every
# machine (docs/deploy.md). Its objects stay private and no URL of theirs, signed or not, is ever
# made: files are read through the storage API and served by /uploads/<id>/ alone, where the
# owner check and the headers that keep them from running hold.
CHAT_S3_BUCKET = envstr("CHAT_S3_BUCKET")
if CHAT_S3_BUCKET:
    STORAGES["default"] = s3_storage(
        CHAT_S3_BUCKET,
        endpoint_url=envstr("CHAT_S3_ENDPOINT_URL"),
        region=envstr("CHAT_S3_REGION"),
        access_key=envstr("CHAT_S3_ACCESS_KEY_ID"),
        secret_key=envstr("CHAT_S3_SECRET_ACCESS_KEY"),
        prefix=envstr("CHAT_S3_PREFIX"),
    )

# Largest file accepted, in bytes; a larger one is refused while it streams in, and not stored.
CHAT_MAX_UPLOAD_BYTES = envnumber("CHAT_MAX_UPLOAD_BYTES", 20 * 1024 * 1024)
# Bytes of uploads one user may keep stored, sent or not (0: unlimited).
CHAT_UPLOAD_QUOTA_BYTES = envnumber("CHAT_UPLOAD_QUOTA_BYTES", 500 * 1024 * 1024)
# Content types accepted, as decided from the bytes (never the name or the browser's claim).
CHAT_UPLOAD_TYPES = envlist(
    "CHAT_UPLOAD_TYPES", ["image/png", "image/jpeg", "image/gif", "image/webp", "application/pdf", "text/plain"]
)
# Names that may hold plain text; such a file is text/plain when all of it is valid UTF-8.
CHAT_TEXT_UPLOAD_EXTENSIONS = envlist(
    "CHAT_TEXT_UPLOAD_EXTENSIONS",
    "txt md markdown rst csv tsv json jsonl yaml yml toml ini cfg conf log xml html htm css svg "
    "py js mjs ts tsx jsx java c h cc cpp hpp cs go rs rb php pl sh bash zsh sql r swift kt scala lua "
    "tex diff patch".split(),
)
# Images are scaled down to this longest side (pixels) when uploaded.
CHAT_IMAGE_MAX_SIDE = envnumber("CHAT_IMAGE_MAX_SIDE", 2048)
# Uploads never sent with a message are removed after this many hours (`manage.py sweep_uploads`).
CHAT_UPLOAD_UNSENT_HOURS = envnumber("CHAT_UPLOAD_UNSENT_HOURS", 24)
# How often (seconds) each server process runs that sweep itself (0: never; cron runs the command).
CHAT_UPLOAD_SWEEP_SECONDS = envnumber("CHAT_UPLOAD_SWEEP_SECONDS", 3600, float)
# What each model takes besides text, e.g. `vision-model=images+files,pdf-model=files,small=`;
# models not listed take CHAT_DEFAULT_MODEL_CAPABILITIES. The local model is text only, always.
CHAT_MODEL_CAPABILITIES = envcapabilities("CHAT_MODEL_CAPABILITIES", {})
CHAT_DEFAULT_MODEL_CAPABILITIES = envlist("CHAT_DEFAULT_MODEL_CAPABILITIES", ["images", "files"])

# --- Context windows (chat/answering/context.py) ----------------------------------------------

# Below this a model could not hold a question and its answer: a smaller figure is a typo.
MIN_MODEL_CONTEXT = 256


def envcontext(name, default):
    """A context size in tokens, at least MIN_MODEL_CONTEXT."""
    size = envnumber(name, default)
    if size < MIN_MODEL_CONTEXT:
        raise ImproperlyConfigured(f"{name} must be at least {MIN_MODEL_CONTEXT} tokens, got {size}")
    return size


def envcontexts(name, default):
    """`model=tokens,other-model=tokens` as {model: tokens}, each at least MIN_MODEL_CONTEXT."""
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return dict(default)
    found = {}
    for entry in value.split(","):
        model, equals, tokens = entry.strip().rpartition("=")
        tokens = tokens.strip().replace("_", "")
        if not equals or not model.strip() or not tokens.isdigit() or int(tokens) < MIN_MODEL_CONTEXT:
            raise ImproperlyConfigured(
                f"{name} entries look like model=32768 (at least {MIN_MODEL_CONTEXT} tokens), got {entry!r}"
            )
        found[model.strip()] = int(tokens)
    return found


# Tokens each model reads at most, its input and its answer together, e.g.
# `gpt-4o=128000,my-small-model=8192`; models not listed have CHAT_DEFAULT_MODEL_CONTEXT, the local
# model LOCAL_MODEL_CONTEXT. An answer's input is fitted to it before it is sent: the oldest turns
# are left out whole. 32,768 is what most served open models take at least; a larger model loses
# only the oldest turns of very long chats until its size is set here.
CHAT_MODEL_CONTEXT = envcontexts("CHAT_MODEL_CONTEXT", {})
CHAT_DEFAULT_MODEL_CONTEXT = envcontext("CHAT_DEFAULT_MODEL_CONTEXT", 32_768)
# Tokens of a context kept free for the answer, at most a quarter of it (512 of the local model's
# 2,048).
CHAT_ANSWER_ROOM_TOKENS = envnumber("CHAT_ANSWER_ROOM_TOKENS", 4096)
# Models whose API takes `truncation: "auto"` (it then drops what still does not fit rather than
# failing): their names, or `*` for every remote model. Never the local model, which refuses it.
CHAT_TRUNCATION_MODELS = envlist("CHAT_TRUNCATION_MODELS", [])

# --- Content Security Policy (chat/security.py) ------------------------------------------------

# Images in answers load only from these hosts: none by default, so a model's Markdown cannot
# make browsers call out to arbitrary servers. Never from this site itself, even if listed: an
# image loads with the reader's cookies (static/chat/markdown.js). 'self' in img-src below is for
# the site's own icons and for an owner's uploaded images (/uploads/<id>/, drawn by
# static/chat/attachments.js, never by Markdown). blob: is for the composer's previews of files
# being attached: object URLs only this page's own scripts can make, of files the user picked.
CHAT_IMAGE_HOSTS = envlist("CHAT_IMAGE_HOSTS", [])
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'none'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'", "blob:", *CHAT_IMAGE_HOSTS],
        "font-src": ["'self'"],
        "connect-src": ["'self'"],
        "manifest-src": ["'self'"],
        "form-action": ["'self'"],
        "base-uri": ["'none'"],
        "object-src": ["'none'"],
        "frame-ancestors": ["'none'"],
    }
}
