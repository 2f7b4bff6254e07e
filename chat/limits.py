"""Per-user limits: the daily token budget and the send rate (login throttling: chat/login_throttle.py).

The budget and the send rate are decided in the database, in the transaction that stores a send,
under a lock on the user's row (UsageEntry.objects.reserve in chat/models.py): every process reads
the same ledger, and sends in parallel cannot all pass one check.
"""

import datetime

from django.utils import timezone

from chat.models import AccountLimits, UsageEntry


def start_of_today():
    return timezone.make_aware(datetime.datetime.combine(timezone.localdate(), datetime.time.min))


def daily_token_budget(user):
    """Tokens the user may spend today; 0 means unlimited."""
    return AccountLimits.budget_of(user.pk)


def tokens_used_today(user):
    """Tokens spent by the answers the user sent today, from the ledger: deleting changes nothing."""
    return UsageEntry.objects.budget_status(user.pk)["used"]


def budget_status(user):
    """Today's usage against the budget, for the page (see UsageEntryQuerySet.budget_status)."""
    return UsageEntry.objects.budget_status(user.pk)


def usage_today(user):
    """Today's answers and tokens per model, from the ledger, for the settings page."""
    return UsageEntry.objects.usage_by_model(user.pk, timezone.localdate())
