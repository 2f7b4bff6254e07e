from django.core.management.base import BaseCommand

from chat.models import Attachment


class Command(BaseCommand):
    help = "Delete uploads never sent with a message within CHAT_UPLOAD_UNSENT_HOURS, with their files."

    def handle(self, *args, **options):
        deleted = Attachment.objects.sweep()
        self.stdout.write(f"Deleted {deleted} unsent upload{'' if deleted == 1 else 's'}.")
