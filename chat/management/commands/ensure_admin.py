import secrets

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Create an `admin` superuser with a random password on the first run, and print it once."

    def add_arguments(self, parser):
        parser.add_argument("--username", default="admin")

    def handle(self, *args, username, **options):
        users = get_user_model()
        if users.objects.filter(is_superuser=True).exists():
            return
        password = secrets.token_urlsafe(12)
        users.objects.create_superuser(username, "", password)
        line = "=" * 72
        self.stdout.write(line)
        self.stdout.write(self.style.SUCCESS(f"Created the first account. Log in as `{username}` with password:"))
        self.stdout.write(f"    {password}")
        self.stdout.write("It is shown only this once; change it with: .venv/bin/python manage.py changepassword admin")
        self.stdout.write(line)
