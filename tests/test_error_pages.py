"""The site's own error pages: in its style, saying what happened, never Django's debug page."""

import pytest
from django.test import Client, RequestFactory
from django.views import defaults

from tests.factories import conversation_with_answer


@pytest.mark.django_db
def test_an_unknown_or_another_users_conversation_shows_the_friendly_404(client, alice, bob, settings):
    settings.DEBUG = False
    theirs = conversation_with_answer(bob)
    client.force_login(alice)
    for url in (f"/c/{theirs.id}/", "/c/00000000-0000-0000-0000-000000000000/", "/no/such/page/"):
        response = client.get(url)
        page = response.content.decode()
        assert response.status_code == 404
        assert "There is nothing here" in page
        assert "Back to your chats" in page
        assert "URLconf" not in page and "Traceback" not in page
        assert 'rel="stylesheet"' in page


@pytest.mark.django_db
def test_a_form_posted_without_its_token_explains_itself(alice):
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    response = client.post("/accounts/logout/")
    assert response.status_code == 403
    assert "This form has expired" in response.content.decode()


def test_the_500_page_renders_without_a_request_context(settings):
    settings.DEBUG = False
    response = defaults.server_error(RequestFactory().get("/"))
    assert response.status_code == 500
    assert "Something went wrong on our side" in response.content.decode()


@pytest.mark.django_db
def test_a_bad_request_page_is_the_sites(alice, settings):
    settings.DEBUG = False
    response = defaults.bad_request(RequestFactory().get("/"), exception=None)
    assert response.status_code == 400
    assert "The request could not be understood" in response.content.decode()
