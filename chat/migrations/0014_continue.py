from django.db import migrations, models


class Migration(migrations.Migration):
    """Message.continued_length: how much of an answer made by Continue its earlier version wrote.
    Existing answers continue nothing: the default 0 is right for every row, no data to move."""

    dependencies = [
        ("chat", "0013_context"),
    ]

    operations = [
        migrations.AddField(
            model_name="message",
            name="continued_length",
            field=models.PositiveIntegerField(
                default=0,
                editable=False,
                help_text="Characters at the start of the text that the version it continues wrote.",
            ),
        ),
    ]
