"""Login throttling: one rule for every form that checks a password.

Two sliding windows of LOGIN_FAILURE_WINDOW seconds, counted in the cache (so across server
processes once REDIS_URL is set); the failure that reaches a limit starts a wait of one window:

- **account and client together**: after LOGIN_FAILURE_LIMIT failures for one username from one
  client, that pair waits. Someone guessing from elsewhere cannot lock the real user out: the real
  user's own client has a count of its own.
- **client alone**: after LOGIN_CLIENT_FAILURE_LIMIT failures from one client, whatever the
  accounts, that client waits for every account, so one password sprayed over many accounts is
  slowed. The limit is higher than the first, for the many people one office address can hide.

A client is its IP address, an IPv6 client its /64 network (one subscriber's allocation, which an
attacker holds whole). Behind proxies that append the peer's address to `X-Forwarded-For`,
TRUSTED_PROXY_COUNT says how many there are (DJANGO_TRUSTED_PROXY_COUNT; 1 by default with
DJANGO_BEHIND_TLS_PROXY): the client is that many entries from the right, the entries a client can
forge being further left. Without proxies the header is ignored, or any client could pick its name.

How it hooks in: LoginThrottleBackend is first in AUTHENTICATION_BACKENDS, so every authenticate()
that carries a request and a password passes through it: the site's and the admin's login forms,
and the password-change forms (chat/accounts.py), which check the old password with authenticate()
for that reason. It counts the attempt *before* the password is checked, a reservation, so parallel
guesses cannot all slip in before the first failure is counted, and refuses it over a limit; the
next backend checks the password. A login, or a right old password, clears the account+client
count and gives the client count its reservation back; a failure keeps both. Nothing else resets
the client count, so logging into an account of one's own between guesses gains nothing.

Considered and not used: django-axes. It compares every lockout parameter set with a single
failure limit, taking the largest count, so a per-client limit above the per-account+client one
cannot be said (the client-alone count is never below the pair's, which makes the pair rule moot);
and a good login deletes the attempts of every parameter set, the client-alone count included.
"""

import dataclasses
import hashlib
import ipaddress
import logging
import math
import time
import unicodedata

from django.conf import settings
from django.contrib.auth.signals import user_logged_in, user_login_failed
from django.core.cache import cache
from django.core.exceptions import PermissionDenied
from django.dispatch import receiver

logger = logging.getLogger(__name__)

ACCOUNT = "account"
CLIENT = "client"
# A window is counted in this many slots; it slides by one slot at a time.
SLOTS = 15


@dataclasses.dataclass(frozen=True, order=True)
class Refusal:
    seconds: int
    scope: str

    @property
    def message(self):
        minutes = max(1, math.ceil(self.seconds / 60))
        whom = "for this account" if self.scope == ACCOUNT else "from your network"
        return f"Too many failed attempts {whom}. Try again in {minutes} minute{'s' * (minutes != 1)}."


class LoginRefused(PermissionDenied):
    """Raised by the backend; authenticate() turns it into a failed login without a password check."""

    def __init__(self, refusal):
        super().__init__(refusal.message)
        self.refusal = refusal


class FailureWindow:
    """The failures of one key in the last `window` seconds, and the wait they imposed.

    Counted in SLOTS cache counters of a slot each: incrementing a cache counter is atomic in
    every cache backend Django ships (and in Redis across processes), so concurrent attempts are
    counted exactly, and the sum over the slots is a window that slides by one slot (a minute
    with the default 15-minute window). The failure that uses the last allowed attempt starts a
    wait of one window, kept as its end time: "Try again in 15 minutes" means 15 minutes.
    """

    def __init__(self, key, limit, window):
        self.key = key
        self.limit = limit
        self.window = window
        self.slot_seconds = max(1, math.ceil(window / SLOTS))
        self.slots = math.ceil(window / self.slot_seconds)

    def slot_key(self, index):
        return f"{self.key}:{index}"

    @property
    def wait_key(self):
        return f"{self.key}:wait"

    def current(self, now):
        return int(now // self.slot_seconds)

    def counts(self, now):
        """{slot index: failures} for the slots in the window, oldest first."""
        current = self.current(now)
        indexes = range(current - self.slots + 1, current + 1)
        found = cache.get_many([self.slot_key(index) for index in indexes])
        return {index: found.get(self.slot_key(index), 0) for index in indexes}

    def reserve(self, now):
        """Count one attempt now; the key of the slot it went into."""
        key = self.slot_key(self.current(now))
        timeout = (self.slots + 1) * self.slot_seconds
        cache.add(key, 0, timeout)
        try:
            cache.incr(key)
        except ValueError:  # expired between add and incr
            cache.set(key, 1, timeout)
        return key

    def refund(self, key):
        try:
            cache.decr(key)
        except ValueError:  # the slot already left the window
            pass

    def clear(self, now):
        cache.delete_many([self.wait_key, *(self.slot_key(index) for index in self.counts(now))])

    def start_waiting(self, now):
        cache.set(self.wait_key, now + self.window, self.window)

    def waiting_for(self, now):
        """Seconds left of a wait the last allowed failure started, or 0."""
        until = cache.get(self.wait_key)
        # The end time, not the cache's expiry, decides: clocks and caches expire differently.
        return max(1, math.ceil(until - now)) if until and until > now else 0

    def wait(self, counts, now):
        """Seconds until the failures in `counts` fall below the limit as their slots leave the
        window: for checks refused by the count alone (concurrent ones, before a wait started)."""
        remaining = sum(counts.values())
        if remaining < self.limit:
            return 1  # refused only for a concurrent check's reservation: try again soon
        for index, failures in counts.items():  # oldest first
            remaining -= failures
            if remaining < self.limit:
                return max(1, math.ceil((index + self.slots) * self.slot_seconds - now))
        return 1  # not reached while the limit is above 0


def normalized_username(username):
    """The name as the account counter knows it: the same for "Alice", "alice " and "ａｌｉｃｅ"."""
    return unicodedata.normalize("NFKC", username or "").strip().casefold()


def network_of(address):
    """The client as the throttle counts it: an IPv4 address, or an IPv6 address's /64 network."""
    try:
        ip = ipaddress.ip_address(address.strip())
    except ValueError:
        return address.strip() or "unknown"
    if ip.version == 6:
        if ip.ipv4_mapped:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def client_address(request):
    """The client's address: REMOTE_ADDR, or behind TRUSTED_PROXY_COUNT proxies the address the
    outermost of them appended to X-Forwarded-For (entries further left are the client's to forge)."""
    address = request.META.get("REMOTE_ADDR", "")
    proxies = settings.TRUSTED_PROXY_COUNT
    if proxies:
        hops = [hop.strip() for hop in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if hop.strip()]
        if len(hops) >= proxies:
            address = hops[-proxies]
        else:
            # Fewer hops than proxies: the request did not come through them all. Its peer is the
            # best name there is, and one the client cannot choose.
            logger.warning("A login came with %d X-Forwarded-For entries behind %d proxies", len(hops), proxies)
    return network_of(address)


def _hashed(*parts):
    # Usernames and addresses are user input: hashed, they make keys of one shape for every cache.
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


def windows_for(username, client):
    window = settings.LOGIN_FAILURE_WINDOW
    pair = f"chat:login:pair:{_hashed(normalized_username(username), client)}"
    return [
        (ACCOUNT, FailureWindow(pair, settings.LOGIN_FAILURE_LIMIT, window)),
        (CLIENT, FailureWindow(f"chat:login:client:{_hashed(client)}", settings.LOGIN_CLIENT_FAILURE_LIMIT, window)),
    ]


class Attempt:
    """One password check: its reservations, and a refusal when it was over a limit."""

    def __init__(self, username, client, reservations, refusal=None):
        self.username = username
        self.client = client
        # (scope, window, slot key, attempts counted with this one)
        self.reservations = reservations
        self.refusal = refusal

    @classmethod
    def begin(cls, username, client):
        """Reserve the attempt in every window, or refuse it (and reserve nothing) over a limit."""
        now = time.time()
        reservations, refusals = [], []
        for scope, window in windows_for(username, client):
            if not window.limit:
                continue
            waiting = window.waiting_for(now)
            if waiting:
                refusals.append(Refusal(waiting, scope))
                continue
            key = window.reserve(now)
            counts = window.counts(now)
            reservations.append((scope, window, key, sum(counts.values())))
            if sum(counts.values()) > window.limit:
                counts[window.current(now)] -= 1  # this attempt's own reservation, refunded below
                refusals.append(Refusal(window.wait(counts, now), scope))
        if refusals:
            for _, window, key, _ in reservations:
                window.refund(key)
            refusal = max(refusals)
            logger.info("Login refused for %s over the %s limit, %d s to wait", client, refusal.scope, refusal.seconds)
            return cls(username, client, [], refusal)
        return cls(username, client, reservations)

    def failed(self):
        """The password was wrong: the reservations stay, and the last allowed one starts the wait."""
        now = time.time()
        for _, window, _, counted in self.reservations:
            if counted >= window.limit:
                window.start_waiting(now)
        self.reservations = []

    def succeeded(self):
        """The password was right: the pair starts afresh and the client gets its attempt back."""
        now = time.time()
        for scope, window, key, _ in self.reservations:
            if scope == ACCOUNT:
                window.clear(now)
            else:
                window.refund(key)
        self.reservations = []


def begin(request, username):
    """Reserve a password check for `username` from the request's client; the Attempt is also
    kept on the request, where the form reads a refusal and the login signal settles success."""
    attempt = Attempt.begin(username, client_address(request))
    request.login_attempt = attempt
    return attempt


def succeeded(request):
    attempt = getattr(request, "login_attempt", None)
    if attempt is not None:
        attempt.succeeded()


def failed(request):
    attempt = getattr(request, "login_attempt", None)
    if attempt is not None:
        attempt.failed()


def refusal_of(request):
    """The refusal of the request's last password check, if it was refused."""
    attempt = getattr(request, "login_attempt", None)
    return attempt.refusal if attempt is not None else None


class LoginThrottleBackend:
    """First in AUTHENTICATION_BACKENDS: counts or refuses every password check made with a request.

    It authenticates nobody (ModelBackend, next, checks the password) and has no get_user, so
    sessions keep naming ModelBackend. Without a request (a shell, a test client's login()) there
    is no client to count, and nothing is throttled.
    """

    def authenticate(self, request, username=None, password=None, **credentials):
        if request is None or password is None:
            return None
        attempt = begin(request, username or "")
        if attempt.refusal is not None:
            raise LoginRefused(attempt.refusal)
        return None


@receiver(user_logged_in)
def clear_on_login(sender, request, user, **kwargs):
    if request is not None:
        succeeded(request)


@receiver(user_login_failed)
def wait_after_the_last_failure(sender, credentials, request=None, **kwargs):
    # authenticate() sends it when no backend let the user in, a refusal of ours included (that
    # attempt has no reservations: nothing happens).
    if request is not None:
        failed(request)
