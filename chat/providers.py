"""Which models the site offers and how each one is reached.

A remote Open Responses API is configured by OPENRESPONSES_BASE_URL / OPENRESPONSES_API_KEY; the
bundled local model (chat/localmodel) is offered whenever it is installed and enabled, and is the
only model when no remote API is configured, so a fresh install chats offline. While `make run`
still installs it in the background it is offered as not ready: its label says so, and a send to
it is refused with the sentence of `problem` until it is ready (no restart needed).

A `Provider` carries its whole connection (base URL, key, timeouts, temperature): callers name a
model and get a client for it, or the sentence saying what to configure before it can work. It
also knows its model's context size (CHAT_MODEL_CONTEXT, LOCAL_MODEL_CONTEXT), which an answer's
input is fitted to (chat/answering/context.py), and whether its API takes `truncation: "auto"`.
"""

from dataclasses import dataclass, field
from urllib.parse import urlsplit

from django.conf import settings

from chat.answering.context import Window
from chat.localmodel import credentials, runtime, transport
from chat.upstream import UpstreamClient
from chat.upstream.client import LOOPBACK_HOSTS

# The local model answers one request at a time: waiting for it is not an error.
LOCAL_MODEL_MIN_TIMEOUT = 300


@dataclass(frozen=True)
class Provider:
    model: str
    label: str
    base_url: str
    api_key: str
    timeout: float
    connect_timeout: float
    temperature: float | None = None  # sent with every request when set; remote models keep theirs
    local: bool = False
    problem: str = ""  # why it cannot answer yet (the local model still being installed)
    # Tokens the model reads at most, input and answer together; whether the API takes
    # `truncation: "auto"` (CHAT_TRUNCATION_MODELS).
    context_tokens: int = field(default_factory=lambda: settings.CHAT_DEFAULT_MODEL_CONTEXT)
    truncation: bool = False
    # The most tokens one answer of this model may write (its own limit where known), or None.
    max_output_tokens: int | None = None

    def __repr__(self):
        # Never show the key, even in a traceback's locals.
        return f"Provider(model={self.model!r}, base_url={self.base_url!r})"

    def configuration_problem(self):
        """A sentence saying what to set, when requests could not possibly succeed (or why the model
        cannot answer yet); else None."""
        if self.problem:
            return self.problem
        if self.local or self.api_key or (urlsplit(self.base_url).hostname or "").lower() in LOOPBACK_HOSTS:
            return None
        return (
            f"No API key is configured for {self.base_url}: set OPENRESPONSES_API_KEY "
            "(or point OPENRESPONSES_BASE_URL at a local server)."
        )

    def client(self, session):
        """The upstream client for this provider's requests, on `session` (one per worker thread)."""
        return UpstreamClient(
            base_url=self.base_url,
            api_key=self.api_key,
            timeout=self.timeout,
            connect_timeout=self.connect_timeout,
            temperature=self.temperature,
            truncation=self.truncation,
            session=session,
        )

    def window(self):
        """The context an answer's input is fitted to, with room kept for the answer."""
        room = min(settings.CHAT_ANSWER_ROOM_TOKENS, self.context_tokens // 4)
        return Window(self.context_tokens, room)


def remote(model):
    return Provider(
        model,
        model,
        settings.OPENRESPONSES_BASE_URL,
        settings.OPENRESPONSES_API_KEY,
        timeout=settings.OPENRESPONSES_TIMEOUT,
        connect_timeout=settings.OPENRESPONSES_CONNECT_TIMEOUT,
        context_tokens=settings.CHAT_MODEL_CONTEXT.get(model, settings.CHAT_DEFAULT_MODEL_CONTEXT),
        truncation=bool({model, "*"} & set(settings.CHAT_TRUNCATION_MODELS)),
        max_output_tokens=settings.CHAT_MAX_OUTPUT_TOKENS or None,
    )


def local(label="", problem=""):
    """The bundled model: in-process (the adapter chat/localmodel/transport.py mounts on the
    worker's sessions, no HTTP server in between), or on the server LOCAL_MODEL_BASE_URL names.
    `label` and `problem` say so while it cannot answer yet."""
    base_url = f"{settings.LOCAL_MODEL_BASE_URL}/local/v1" if settings.LOCAL_MODEL_BASE_URL else transport.BASE_URL
    return Provider(
        settings.LOCAL_MODEL_NAME,
        label or settings.LOCAL_MODEL_LABEL,
        base_url,
        credentials.local_token(),
        timeout=max(settings.OPENRESPONSES_TIMEOUT, LOCAL_MODEL_MIN_TIMEOUT),
        connect_timeout=settings.OPENRESPONSES_CONNECT_TIMEOUT,
        temperature=settings.LOCAL_MODEL_TEMPERATURE,
        local=True,
        problem=problem,
        context_tokens=settings.LOCAL_MODEL_CONTEXT,
        # Whatever it reads and writes fits its context; a site limit may be lower.
        max_output_tokens=min(filter(None, (settings.CHAT_MAX_OUTPUT_TOKENS, settings.LOCAL_MODEL_CONTEXT))),
    )


def local_state():
    """The local model's runtime.State when it is offered (enabled, and installed or being
    installed), else None."""
    if not settings.LOCAL_MODEL_ENABLED:
        return None
    state = runtime.state()
    return None if state is runtime.State.ABSENT else state


def local_provider():
    """The local model's Provider, ready or not yet; None when it is not offered."""
    state = local_state()
    if state is None:
        return None
    if state is runtime.State.READY:
        return local()
    return local(f"{settings.LOCAL_MODEL_LABEL} ({NOT_READY_LABELS[state]})", runtime.SENTENCES[state])


# Added to the picker's label of a local model that cannot answer yet.
NOT_READY_LABELS = {runtime.State.INSTALLING: "being installed, not ready yet", runtime.State.FAILED: "not installed"}


def remote_configured():
    return bool(settings.OPENRESPONSES_API_KEY) or (
        settings.OPENRESPONSES_BASE_URL != settings.OPENRESPONSES_DEFAULT_BASE_URL
    )


def providers():
    """Every model offered, in picker order; the first is the default."""
    offered = []
    if remote_configured():
        offered += [remote(model) for model in settings.OPENRESPONSES_MODELS]
    local_model = local_provider()
    if local_model is not None:
        offered.append(local_model)
    if not offered:
        # Nothing configured and no local model: offer the defaults, whose requests will explain
        # what to set.
        offered = [remote(model) for model in settings.OPENRESPONSES_MODELS]
    return offered


def model_names():
    return [provider.model for provider in providers()]


def default_model():
    return providers()[0].model


def provider_for(model):
    """The provider of `model`; a model no longer offered (a conversation's older choice) goes to
    the remote API, which says whether it knows it."""
    for provider in providers():
        if provider.model == model:
            return provider
    return remote(model)
