"""Which models the site offers and where each one's requests go.

A remote Open Responses API is configured by OPENRESPONSES_BASE_URL / OPENRESPONSES_API_KEY; the
bundled local model (chat/localmodel) is offered whenever it is installed and enabled, and is the
only model when no remote API is configured, so a fresh install chats offline.
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


def local_available():
    return settings.LOCAL_MODEL_ENABLED and runtime.installed()


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
    if local_available():
        offered.append(Provider(settings.LOCAL_MODEL_NAME, settings.LOCAL_MODEL_LABEL, "", "", local=True))
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
