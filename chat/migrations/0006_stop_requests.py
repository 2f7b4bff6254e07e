"""Stops are requests recorded on the answer's row, read by the process generating it."""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('chat', '0005_audit_doors'),
    ]

    operations = [
        migrations.AddField(
            model_name='message',
            name='stop_requested_at',
            field=models.DateTimeField(blank=True, editable=False, null=True),
        ),
    ]
