"""Export transcripts from the command line; every export is on the audit trail, as in the admin."""

import datetime
import getpass
import os
import shlex

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from chat.models import AuditEvent, Conversation
from chat.transcripts import FORMATS, export


def day(value):
    try:
        return datetime.date.fromisoformat(value)
    except ValueError:
        raise CommandError(f"Dates are YYYY-MM-DD, got {value!r}") from None


def operating_system_user():
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name and no passwd entry, as in some containers
        return f"uid {os.getuid()}"


class Command(BaseCommand):
    help = (
        "Export conversations with their messages as JSON or Markdown, to a file or standard output. "
        "Each export is recorded in the audit trail, under the --as name or the operating-system user."
    )

    def add_arguments(self, parser):
        parser.add_argument("--user", action="append", default=[], help="Only this username (repeatable).")
        parser.add_argument("--since", type=day, help="Conversations started on or after this day (YYYY-MM-DD).")
        parser.add_argument("--until", type=day, help="Conversations started on or before this day (YYYY-MM-DD).")
        parser.add_argument("--format", choices=FORMATS, default="json")
        parser.add_argument("--output", "-o", help="Write to this file instead of standard output.")
        parser.add_argument(
            "--as",
            dest="reader",
            help="Who is exporting, for the audit trail (default: the operating-system user).",
        )

    def handle(self, *args, user, since, until, format, output, reader, **options):
        if not settings.CHAT_STAFF_CAN_READ_TRANSCRIPTS:
            raise CommandError(
                "Transcripts are hidden from staff (CHAT_STAFF_CAN_READ_TRANSCRIPTS=0); "
                "set CHAT_STAFF_CAN_READ_TRANSCRIPTS=1 for this command to export them."
            )
        conversations = Conversation.objects.order_by("created_at")
        if user:
            known = set(get_user_model().objects.filter(username__in=user).values_list("username", flat=True))
            unknown = sorted(set(user) - known)
            if unknown:
                raise CommandError(f"No such user: {', '.join(unknown)}")
            conversations = conversations.filter(owner__username__in=user)
        zone = timezone.get_current_timezone()
        if since:
            conversations = conversations.filter(
                created_at__gte=datetime.datetime.combine(since, datetime.time.min, tzinfo=zone)
            )
        if until:
            conversations = conversations.filter(
                created_at__lt=datetime.datetime.combine(
                    until + datetime.timedelta(days=1), datetime.time.min, tzinfo=zone
                )
            )
        text, _ = export(conversations, format)
        # Recorded before anything is written: an export that is out is an export on record.
        system_user = operating_system_user()
        AuditEvent.record(
            None,
            AuditEvent.Action.EXPORTED,
            conversations.select_related("owner"),
            staff_username=reader or system_user,
            detail=f"{format}, command line, operating-system user {system_user}",
            query=self.command_line(user, since, until, format, output, reader),
        )
        if output:
            with open(output, "w", encoding="utf-8") as file:
                file.write(text)
            self.stderr.write(f"Wrote {conversations.count()} conversations to {output}")
        else:
            self.stdout.write(text)

    @staticmethod
    def command_line(users, since, until, format, output, reader):
        """The command as it was given, rebuilt from its options (call_command has no argv)."""
        words = ["manage.py", "export_transcripts"]
        for name in users:
            words += ["--user", name]
        for option, value in (("--since", since), ("--until", until)):
            if value:
                words += [option, value.isoformat()]
        words += ["--format", format]
        if output:
            words += ["--output", output]
        if reader:
            words += ["--as", reader]
        return shlex.join(words)
