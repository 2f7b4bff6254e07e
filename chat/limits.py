"""Per-user limits: the daily token budget, the send rate and login throttling.

The budget and the send rate are decided in the database, in the transaction that stores a send,
under a lock on the user's row (UsageEntry.objects.reserve in chat/models.py): every process reads
the same ledger, and sends in parallel cannot all pass one check. Login failure counters live in
the cache, so they hold across server processes once REDIS_URL is set.
"""

import datetime
import math
import time

from django.conf import settings
from django.core.cache import cache
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


def login_failures_key(username):
    return f"chat:login-failures:{username.strip().lower()}"


def login_blocked_for(username):
    """Seconds until this account may try to log in again, or None."""
    blocked_until = cache.get(login_failures_key(username) + ":blocked")
    if blocked_until and blocked_until > time.time():
        return math.ceil(blocked_until - time.time())
    return None


def record_login_failure(username):
    key = login_failures_key(username)
    window = settings.LOGIN_FAILURE_WINDOW
    cache.add(key, 0, window)
    try:
        failures = cache.incr(key)
    except ValueError:
        cache.set(key, 1, window)
        failures = 1
    if failures >= settings.LOGIN_FAILURE_LIMIT:
        cache.set(key + ":blocked", time.time() + window, window)
        cache.delete(key)


def clear_login_failures(username):
    cache.delete_many([login_failures_key(username), login_failures_key(username) + ":blocked"])
