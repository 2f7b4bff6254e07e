"""The status an error body's code stands for (`chat.upstream.client._status_meant`) and the
waits between tries, without a server.

The sentences these lead to, through a real HTTP server, are tested in
tests/test_upstream_client.py and tests/test_real_upstreams.py.
"""

import pytest

from chat.upstream import HTTP_SENTENCES, UpstreamClient, UpstreamError
from chat.upstream.client import CODE_STATUSES, _status_meant


@pytest.mark.parametrize("code, status", sorted(CODE_STATUSES.items()))
def test_each_known_code_or_type_stands_for_its_status_in_either_place(code, status):
    assert status in HTTP_SENTENCES
    assert _status_meant(code, "") == status
    assert _status_meant("", code) == status
    assert _status_meant(f"  {code.upper()} ", "") == status, "case and spaces around do not matter"


@pytest.mark.parametrize("status", sorted(HTTP_SENTENCES))
def test_a_numeric_code_stands_for_a_status_with_a_sentence(status):
    assert _status_meant(str(status), "") == status
    assert _status_meant("", str(status)) == status


@pytest.mark.parametrize("code", ["", "418", "200", "999", "5OO", "-500", "some_code", "insufficient_quota", "rate"])
def test_other_codes_stand_for_nothing(code):
    assert _status_meant(code, "") is None
    assert _status_meant("", code) is None


def test_the_code_wins_over_the_type_and_the_type_is_read_when_the_code_says_nothing():
    assert _status_meant("overloaded_error", "invalid_request_error") == 503
    assert _status_meant("some_code", "invalid_request_error") == 400
    assert _status_meant("418", "server_error") == 500


def wait(client, error, tries):
    return client._retry_wait(error, tries)


def test_retryable_errors_back_off_exponentially_a_bounded_number_of_times():
    client = UpstreamClient(base_url="http://127.0.0.1:9/v1", retries=3, backoff=0.5)
    busy = UpstreamError("http_503", "Busy.", retryable=True)
    assert [wait(client, busy, tries) for tries in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, None]
    assert wait(client, UpstreamError("http_500", "Broken."), 1) is None


def test_retry_after_is_honoured_up_to_the_limit_and_said_beyond_it():
    client = UpstreamClient(base_url="http://127.0.0.1:9/v1", max_retry_wait=20)
    assert wait(client, UpstreamError("http_429", "Slow down.", retry_after=0, retryable=True), 1) == 0
    assert wait(client, UpstreamError("http_429", "Slow down.", retry_after=20, retryable=True), 1) == 20
    long = UpstreamError("http_429", "Slow down.", retry_after=3600, retryable=True)
    assert wait(client, long, 1) is None
    assert long.message == str(long) == "Slow down (it asked to wait 3600 seconds)."
