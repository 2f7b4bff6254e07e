import json

import pytest
import time_machine
from django.core.management import CommandError, call_command

from tests.factories import conversation_with_answer

pytestmark = pytest.mark.django_db


def test_it_exports_by_user_and_date_range_as_json(alice, bob, tmp_path, capsys):
    with time_machine.travel("2026-03-01 12:00Z"):
        conversation_with_answer(alice, "march question")
    with time_machine.travel("2026-04-01 12:00Z"):
        conversation_with_answer(alice, "april question")
        conversation_with_answer(bob, "bob's question")
    output = tmp_path / "export.json"
    call_command("export_transcripts", "--user", "alice", "--since", "2026-03-15", "--output", str(output))
    data = json.loads(output.read_text())
    assert [conversation["title"] for conversation in data["conversations"]] == ["april question"]
    call_command("export_transcripts", "--until", "2026-03-31", "--format", "markdown")
    markdown = capsys.readouterr().out
    assert "# march question" in markdown and "april" not in markdown


def test_it_refuses_unknown_users_and_bad_dates(alice):
    with pytest.raises(CommandError, match="No such user: nobody"):
        call_command("export_transcripts", "--user", "nobody")
    with pytest.raises(CommandError):
        call_command("export_transcripts", "--since", "yesterday")
