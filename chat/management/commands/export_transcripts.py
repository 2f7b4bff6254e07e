import datetime

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from chat.models import Conversation
from chat.transcripts import FORMATS, export


def day(value):
    try:
        return datetime.date.fromisoformat(value)
    except ValueError:
        raise CommandError(f"Dates are YYYY-MM-DD, got {value!r}") from None


class Command(BaseCommand):
    help = "Export conversations with their messages as JSON or Markdown, to a file or standard output."

    def add_arguments(self, parser):
        parser.add_argument("--user", action="append", default=[], help="Only this username (repeatable).")
        parser.add_argument("--since", type=day, help="Conversations started on or after this day (YYYY-MM-DD).")
        parser.add_argument("--until", type=day, help="Conversations started on or before this day (YYYY-MM-DD).")
        parser.add_argument("--format", choices=FORMATS, default="json")
        parser.add_argument("--output", "-o", help="Write to this file instead of standard output.")

    def handle(self, *args, user, since, until, format, output, **options):
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
        if output:
            with open(output, "w", encoding="utf-8") as file:
                file.write(text)
            self.stderr.write(f"Wrote {conversations.count()} conversations to {output}")
        else:
            self.stdout.write(text)
