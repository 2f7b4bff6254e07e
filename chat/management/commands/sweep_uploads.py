from django.core.management.base import BaseCommand

from chat import upload_sweep


class Command(BaseCommand):
    help = (
        "Delete uploads never sent with a message within CHAT_UPLOAD_UNSENT_HOURS, with their files, "
        "and stored files of that age that no upload names."
    )

    def handle(self, *args, **options):
        swept = upload_sweep.sweep()
        self.stdout.write(f"Deleted {swept.uploads} unsent upload{'' if swept.uploads == 1 else 's'}.")
        if swept.orphans:
            self.stdout.write(
                f"Deleted {swept.orphans} stored file{'' if swept.orphans == 1 else 's'} that no upload named."
            )
