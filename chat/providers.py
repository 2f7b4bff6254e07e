"""Which models the site offers and where each one's requests go.

A remote Open Responses API is configured by OPENRESPONSES_BASE_URL / OPENRESPONSES_API_KEY; the
bundled local model (chat/localmodel) is offered whenever it is installed and enabled, and is the
only model when no remote API is configured, so a fresh install chats offline. While `make run`
still installs it in the background it is offered as not ready: its label says so, and a send to
it is refused with the sentence of `problem` until it is ready (no restart needed).
"""

from dataclasses import dataclass

from django.conf import settings

from chat.localmodel import runtime


@dataclass(frozen=True)
class Provider:
    model: str
    label: str
    base_url: str  # empty for the local model: this very server, found at request time
    api_key: str
    local: bool = False
    problem: str = ""  # why it cannot answer yet (the local model still being installed)


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
        return Provider(settings.LOCAL_MODEL_NAME, settings.LOCAL_MODEL_LABEL, "", "", local=True)
    label = f"{settings.LOCAL_MODEL_LABEL} ({NOT_READY_LABELS[state]})"
    return Provider(settings.LOCAL_MODEL_NAME, label, "", "", local=True, problem=runtime.SENTENCES[state])


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
        offered += [
            Provider(model, model, settings.OPENRESPONSES_BASE_URL, settings.OPENRESPONSES_API_KEY)
            for model in settings.OPENRESPONSES_MODELS
        ]
    local = local_provider()
    if local is not None:
        offered.append(local)
    if not offered:
        # Nothing configured and no local model: offer the defaults, whose requests will explain
        # what to set.
        offered = [
            Provider(model, model, settings.OPENRESPONSES_BASE_URL, settings.OPENRESPONSES_API_KEY)
            for model in settings.OPENRESPONSES_MODELS
        ]
    return offered


def model_names():
    return [provider.model for provider in providers()]


def default_model():
    return providers()[0].model


def provider_for(model):
    for provider in providers():
        if provider.model == model:
            return provider
    return None
