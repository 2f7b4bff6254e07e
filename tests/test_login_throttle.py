"""Login throttling through the real forms: the site's login, the admin's, and both password changes.

Each test client's address is set per request with REMOTE_ADDR, as daphne sets it from the socket.
"""

import threading

import pytest
import time_machine
from django.contrib.auth import authenticate
from django.db import connections
from django.test import Client, RequestFactory
from django.urls import reverse

from tests.conftest import make_user

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse battery"
ATTACKER = "203.0.113.66"
OWNER = "198.51.100.7"
WRONG_PASSWORD = "Please enter"  # both forms' "Please enter a correct/the correct username and password"
ACCOUNT_WAIT = "Too many failed attempts for this account. Try again in 15 minutes."
CLIENT_WAIT = "Too many failed attempts from your network. Try again in 15 minutes."


@pytest.fixture
def staff(db):
    """An account both login forms let in: the admin's wants staff."""
    return make_user("keeper", is_staff=True)


LOGIN_FORMS = {"site": "login", "admin": "admin:login"}


def log_in(client, form, username, password, address):
    return client.post(reverse(LOGIN_FORMS[form]), {"username": username, "password": password}, REMOTE_ADDR=address)


def logged_in(client):
    return "_auth_user_id" in client.session


@pytest.mark.parametrize("form", LOGIN_FORMS)
def test_every_login_form_refuses_the_right_password_after_the_limit(client, staff, settings, form):
    settings.LOGIN_FAILURE_LIMIT = 3
    for _ in range(3):
        assert WRONG_PASSWORD in log_in(client, form, "keeper", "wrong", ATTACKER).content.decode()
    response = log_in(client, form, "keeper", PASSWORD, ATTACKER)
    assert ACCOUNT_WAIT in response.content.decode()
    assert not logged_in(client)


@pytest.mark.parametrize("first, second", [("site", "admin"), ("admin", "site")])
def test_the_site_and_the_admin_count_failures_together(client, staff, settings, first, second):
    """One rule, one count: guessing on one form then moving to the other gains nothing."""
    settings.LOGIN_FAILURE_LIMIT = 4
    for _ in range(2):
        log_in(client, first, "keeper", "wrong", ATTACKER)
        log_in(client, second, "keeper", "wrong", ATTACKER)
    for form in (first, second):
        assert ACCOUNT_WAIT in log_in(client, form, "keeper", PASSWORD, ATTACKER).content.decode()
    assert not logged_in(client)


@pytest.mark.parametrize("form", LOGIN_FORMS)
def test_an_attacker_locked_out_does_not_lock_out_the_owner_elsewhere(staff, settings, form):
    settings.LOGIN_FAILURE_LIMIT = 3
    attacker, owner = Client(), Client()
    for _ in range(10):
        log_in(attacker, form, "keeper", "wrong", ATTACKER)
    assert ACCOUNT_WAIT in log_in(attacker, form, "keeper", PASSWORD, ATTACKER).content.decode()
    # Spelled otherwise, the name is the same account to the throttle.
    assert ACCOUNT_WAIT in log_in(attacker, form, " KEEPER", PASSWORD, ATTACKER).content.decode()
    assert log_in(owner, form, "keeper", PASSWORD, OWNER).status_code == 302
    assert logged_in(owner)


@pytest.mark.parametrize("form", LOGIN_FORMS)
def test_one_password_sprayed_over_many_accounts_is_slowed_per_client(settings, form):
    settings.LOGIN_FAILURE_LIMIT = 3
    settings.LOGIN_CLIENT_FAILURE_LIMIT = 6
    victims = [make_user(f"victim{number}", is_staff=True) for number in range(8)]
    sprayer = Client()
    answers = [log_in(sprayer, form, victim.username, "Summer2026!", ATTACKER).content.decode() for victim in victims]
    assert all(WRONG_PASSWORD in answer for answer in answers[:6])
    assert all(CLIENT_WAIT in answer for answer in answers[6:])
    # From that client even a right password waits, for any account, and unknown names count too.
    assert CLIENT_WAIT in log_in(sprayer, form, "victim0", PASSWORD, ATTACKER).content.decode()
    assert CLIENT_WAIT in log_in(sprayer, form, "nobody-at-all", "x", ATTACKER).content.decode()
    assert not logged_in(sprayer)
    # The accounts' owners, elsewhere, are not slowed.
    owner = Client()
    assert log_in(owner, form, "victim7", PASSWORD, OWNER).status_code == 302


def test_the_wait_ends_when_the_failures_leave_the_window(client, staff, settings):
    settings.LOGIN_FAILURE_LIMIT = 3
    with time_machine.travel("2026-06-01 12:00:30Z", tick=False) as clock:
        for _ in range(3):
            log_in(client, "site", "keeper", "wrong", ATTACKER)
        clock.shift(10 * 60)
        assert "Try again in 5 minutes." in log_in(client, "site", "keeper", PASSWORD, ATTACKER).content.decode()
        clock.shift(5 * 60)
        assert log_in(client, "site", "keeper", PASSWORD, ATTACKER).status_code == 302


def test_failures_count_over_a_sliding_window_and_the_wait_starts_at_the_last(client, staff, settings):
    """No fixed windows to time guesses around: failures 13 minutes apart add up, 16 do not."""
    settings.LOGIN_FAILURE_LIMIT = 3
    with time_machine.travel("2026-06-01 12:00:59Z", tick=False) as clock:
        log_in(client, "site", "keeper", "wrong", ATTACKER)
        clock.shift(2)  # into the next minute, the next slot
        log_in(client, "site", "keeper", "wrong", ATTACKER)
        clock.shift(13 * 60)
        log_in(client, "site", "keeper", "wrong", ATTACKER)
        assert ACCOUNT_WAIT in log_in(client, "site", "keeper", PASSWORD, ATTACKER).content.decode()
        clock.shift(15 * 60)
        assert log_in(client, "site", "keeper", PASSWORD, ATTACKER).status_code == 302
    client.post(reverse("logout"), REMOTE_ADDR=ATTACKER)
    with time_machine.travel("2026-06-02 12:00:00Z", tick=False) as clock:
        for _ in range(2):
            log_in(client, "site", "keeper", "wrong", ATTACKER)
        clock.shift(16 * 60)
        assert WRONG_PASSWORD in log_in(client, "site", "keeper", "wrong", ATTACKER).content.decode()
        assert log_in(client, "site", "keeper", PASSWORD, ATTACKER).status_code == 302


@pytest.mark.parametrize("form", LOGIN_FORMS)
def test_a_good_login_clears_the_accounts_count_from_that_client(staff, settings, form):
    settings.LOGIN_FAILURE_LIMIT = 3
    user = Client()
    for _ in range(2):
        log_in(user, form, "keeper", "wrong", OWNER)
    assert log_in(user, form, "keeper", PASSWORD, OWNER).status_code == 302
    user.post(reverse("logout"), REMOTE_ADDR=OWNER)
    for _ in range(2):
        assert WRONG_PASSWORD in log_in(user, form, "keeper", "wrong", OWNER).content.decode()
    assert log_in(user, form, "keeper", PASSWORD, OWNER).status_code == 302


def test_logging_into_ones_own_account_does_not_reset_the_client_count(settings):
    """A sprayer who owns an account gains nothing by logging into it between guesses."""
    settings.LOGIN_FAILURE_LIMIT = 3
    settings.LOGIN_CLIENT_FAILURE_LIMIT = 4
    make_user("mallory")
    victims = [make_user(f"victim{number}") for number in range(6)]
    sprayer = Client()
    answers = []
    for victim in victims:
        answers.append(log_in(sprayer, "site", victim.username, "Summer2026!", ATTACKER).content.decode())
        assert log_in(sprayer, "site", "mallory", PASSWORD, ATTACKER).status_code in (200, 302)
        sprayer.post(reverse("logout"), REMOTE_ADDR=ATTACKER)
    assert all(WRONG_PASSWORD in answer for answer in answers[:4])
    assert all(CLIENT_WAIT in answer for answer in answers[4:])


@pytest.mark.parametrize(
    "url_name, follow_up",
    [("password_change", "password_change_done"), ("admin:password_change", "admin:password_change_done")],
)
def test_the_old_password_of_a_password_change_is_throttled_like_a_login(client, staff, settings, url_name, follow_up):
    """Someone holding a stolen session must not try passwords at will through the change form."""
    settings.LOGIN_FAILURE_LIMIT = 3
    client.force_login(staff)

    def change(old):
        return client.post(
            reverse(url_name),
            {"old_password": old, "new_password1": "a brand new phrase", "new_password2": "a brand new phrase"},
            REMOTE_ADDR=ATTACKER,
        )

    for _ in range(3):
        assert "Your old password was entered incorrectly" in change("wrong").content.decode()
    assert ACCOUNT_WAIT in change(PASSWORD).content.decode()
    staff.refresh_from_db()
    assert staff.check_password(PASSWORD)
    # The same count as the login forms, and the owner elsewhere is not held up.
    assert ACCOUNT_WAIT in log_in(Client(), "site", "keeper", PASSWORD, ATTACKER).content.decode()
    elsewhere = client.post(
        reverse(url_name),
        {"old_password": PASSWORD, "new_password1": "a brand new phrase", "new_password2": "a brand new phrase"},
        REMOTE_ADDR=OWNER,
    )
    assert elsewhere.status_code == 302 and elsewhere["Location"] == reverse(follow_up)
    staff.refresh_from_db()
    assert staff.check_password("a brand new phrase")


def test_the_forwarded_for_header_is_ignored_without_a_proxy(client, staff, settings):
    """A client cannot rename itself: without DJANGO_TRUSTED_PROXY_COUNT the header is the client's own."""
    settings.LOGIN_FAILURE_LIMIT = 3
    settings.TRUSTED_PROXY_COUNT = 0
    for number in range(3):
        client.post(
            reverse("login"),
            {"username": "keeper", "password": "wrong"},
            REMOTE_ADDR=ATTACKER,
            HTTP_X_FORWARDED_FOR=f"192.0.2.{number}",
        )
    refused = client.post(
        reverse("login"),
        {"username": "keeper", "password": PASSWORD},
        REMOTE_ADDR=ATTACKER,
        HTTP_X_FORWARDED_FOR=OWNER,
    )
    assert ACCOUNT_WAIT in refused.content.decode()


def test_behind_a_proxy_the_client_is_the_address_the_proxy_appended(client, staff, settings):
    """nginx appends the peer to X-Forwarded-For; what a client wrote before it is the client's to forge."""
    settings.LOGIN_FAILURE_LIMIT = 3
    settings.TRUSTED_PROXY_COUNT = 1
    proxy = "10.0.0.2"
    for number in range(3):
        client.post(
            reverse("login"),
            {"username": "keeper", "password": "wrong"},
            REMOTE_ADDR=proxy,
            HTTP_X_FORWARDED_FOR=f"192.0.2.{number}, {ATTACKER}",
        )
    forged = client.post(
        reverse("login"),
        {"username": "keeper", "password": PASSWORD},
        REMOTE_ADDR=proxy,
        HTTP_X_FORWARDED_FOR=f"{OWNER}, {ATTACKER}",
    )
    assert ACCOUNT_WAIT in forged.content.decode()
    # The owner, through the same proxy, is another client.
    owner = Client()
    response = owner.post(
        reverse("login"), {"username": "keeper", "password": PASSWORD}, REMOTE_ADDR=proxy, HTTP_X_FORWARDED_FOR=OWNER
    )
    assert response.status_code == 302


def test_an_ipv6_client_is_its_64_network(client, staff, settings):
    """Rotating through the addresses of one /64 (one subscriber's) changes nothing."""
    settings.LOGIN_FAILURE_LIMIT = 3
    for number in range(3):
        log_in(client, "site", "keeper", "wrong", f"2001:db8:1:2::{number + 1:x}")
    assert ACCOUNT_WAIT in log_in(client, "site", "keeper", PASSWORD, "2001:db8:1:2:ffff::9").content.decode()
    assert log_in(Client(), "site", "keeper", PASSWORD, "2001:db8:1:3::1").status_code == 302


def test_parallel_guesses_cannot_pass_the_limit_together(staff, settings):
    """Each check is counted before the password is compared, so a burst gets the limit and no more.

    Under contention a check may be refused that a slower one would have let through (it is given
    back), and the wait may start one check early: fewer than the limit may be checked, never more.
    """
    settings.LOGIN_FAILURE_LIMIT = 3
    settings.LOGIN_CLIENT_FAILURE_LIMIT = 100
    start = threading.Barrier(12)
    checked = []

    def guess():
        try:
            request = RequestFactory().post("/accounts/login/", REMOTE_ADDR=ATTACKER)
            start.wait()
            authenticate(request, username="keeper", password="wrong")
            checked.append(request.login_attempt.refusal is None)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=guess) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(checked) == 12
    in_the_burst = checked.count(True)
    assert in_the_burst <= 3, "at most the limit was checked against the password"
    attacker = Client()
    later = 0
    while WRONG_PASSWORD in log_in(attacker, "site", "keeper", "wrong", ATTACKER).content.decode():
        later += 1
    assert 1 <= in_the_burst + later <= 3
    assert ACCOUNT_WAIT in log_in(attacker, "site", "keeper", PASSWORD, ATTACKER).content.decode()
