import getpass
import json

import pytest
import time_machine
from django.core.management import CommandError, call_command

from chat.models import AuditEvent
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
    assert not AuditEvent.objects.exists(), "nothing was exported"


# --- Every export is on the audit trail ---------------------------------------------------------


def test_a_command_line_export_is_audited_with_who_and_the_command(alice, bob, tmp_path):
    first = conversation_with_answer(alice, "alice's question")
    conversation_with_answer(bob, "bob's question")
    output = tmp_path / "export.md"
    call_command("export_transcripts", "--user", "alice", "--format", "markdown", "-o", str(output), "--as", "ops jane")
    event = AuditEvent.objects.get()
    assert (event.staff, event.staff_username, event.action, event.conversation) == (
        None,
        "ops jane",
        "exported",
        first,
    )
    assert event.detail.startswith("markdown, command line, operating-system user ")
    assert (
        event.query == f"manage.py export_transcripts --user alice --format markdown --output {output} --as 'ops jane'"
    )


def test_a_command_line_export_without_a_name_is_recorded_under_the_system_user(alice, capsys):
    conversation_with_answer(alice)
    call_command("export_transcripts", "--since", "2000-01-01")
    assert "What is a river?" in capsys.readouterr().out
    event = AuditEvent.objects.get()
    assert (event.staff, event.staff_username) == (None, getpass.getuser())
    assert event.query == "manage.py export_transcripts --since 2000-01-01 --format json"


def test_an_export_that_finds_nothing_is_on_record_too(alice):
    call_command("export_transcripts", "--user", "alice", "--as", "ops")
    event = AuditEvent.objects.get()
    assert (event.staff_username, event.conversation, event.action) == ("ops", None, "exported")


def test_the_command_refuses_to_export_while_transcripts_are_hidden(alice, settings):
    conversation_with_answer(alice)
    settings.CHAT_STAFF_CAN_READ_TRANSCRIPTS = False
    with pytest.raises(CommandError, match="CHAT_STAFF_CAN_READ_TRANSCRIPTS"):
        call_command("export_transcripts")
    assert not AuditEvent.objects.exists()
