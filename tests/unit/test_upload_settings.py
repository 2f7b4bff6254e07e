"""The CHAT_MODEL_CAPABILITIES parser of chatsite/settings.py: good values, and loud failures."""

import pytest
from django.core.exceptions import ImproperlyConfigured

from chatsite.settings import envcapabilities


def test_it_reads_models_and_their_capabilities(monkeypatch):
    monkeypatch.setenv("CAPS", " vision/a:1=images+files , pdf=files,small= ")
    assert envcapabilities("CAPS", {}) == {"vision/a:1": ["images", "files"], "pdf": ["files"], "small": []}


@pytest.mark.parametrize("value", [None, "", "  "])
def test_unset_or_blank_is_the_default(monkeypatch, value):
    if value is None:
        monkeypatch.delenv("CAPS", raising=False)
    else:
        monkeypatch.setenv("CAPS", value)
    assert envcapabilities("CAPS", {"m": ["images"]}) == {"m": ["images"]}


@pytest.mark.parametrize("value", ["vision", "=images", "vision=images+audio", "a=images,b"])
def test_malformed_entries_fail_loudly(monkeypatch, value):
    monkeypatch.setenv("CAPS", value)
    with pytest.raises(ImproperlyConfigured, match="CAPS"):
        envcapabilities("CAPS", {})
