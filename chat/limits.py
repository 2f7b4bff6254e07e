"""Per-user limits: the daily token budget and the send rate (login throttling: chat/login_throttle.py).

Counters live in the cache, so they hold across server processes once REDIS_URL is set.
"""

import datetime
import math
import time

from django.conf import settings
from django.core.cache import cache
from django.db.models import Sum
from django.utils import timezone

from chat.models import AccountLimits, Message


def start_of_today():
    today = timezone.localdate()
    return timezone.make_aware(datetime.datetime.combine(today, datetime.time.min))


def daily_token_budget(user):
    """Tokens the user may spend today; 0 means unlimited."""
    override = AccountLimits.objects.filter(user=user).values_list("daily_token_budget", flat=True).first()
    return override if override is not None else settings.CHAT_DAILY_TOKEN_BUDGET


def tokens_used_today(user):
    spent = (
        Message.objects.owned_by(user)
        .filter(created_at__gte=start_of_today())
        .aggregate(total=Sum("total_tokens"))["total"]
    )
    return spent or 0


def budget_status(user):
    """Today's usage against the budget, for the page and for refusing sends."""
    budget = daily_token_budget(user)
    used = tokens_used_today(user)
    return {
        "used": used,
        "budget": budget,
        "exhausted": bool(budget) and used >= budget,
        "resets_at": (start_of_today() + datetime.timedelta(days=1)).isoformat(),
    }


def hit(key, limit, window):
    """Count one event in a fixed window; seconds to wait if it is over `limit`, else None."""
    if not limit:
        return None
    now = time.time()
    bucket = int(now // window)
    cache_key = f"chat:rate:{key}:{bucket}"
    cache.add(cache_key, 0, window + 1)
    try:
        count = cache.incr(cache_key)
    except ValueError:  # expired between add and incr
        cache.set(cache_key, 1, window + 1)
        count = 1
    if count > limit:
        return max(1, math.ceil((bucket + 1) * window - now))
    return None


def send_allowed(user):
    """None when the user may send now, else seconds to wait."""
    return hit(f"send:{user.pk}", settings.CHAT_SENDS_PER_MINUTE, 60)
