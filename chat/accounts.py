"""Account pages beyond Django's own views: throttled login and optional sign-up."""

import math

from django import forms
from django.conf import settings
from django.contrib.auth import login
from django.contrib.auth.forms import AuthenticationForm, UserCreationForm
from django.contrib.auth.views import LoginView
from django.http import Http404
from django.shortcuts import redirect, render

from chat import limits


class ThrottledAuthenticationForm(AuthenticationForm):
    """Refuses further attempts on an account after repeated failures (password guessing)."""

    def clean(self):
        username = self.cleaned_data.get("username") or ""
        wait = limits.login_blocked_for(username)
        if wait:
            minutes = math.ceil(wait / 60)
            raise forms.ValidationError(
                f"Too many failed attempts for this account. Try again in {minutes} minute{'s' * (minutes != 1)}.",
                code="throttled",
            )
        try:
            cleaned = super().clean()
        except forms.ValidationError:
            if username:
                limits.record_login_failure(username)
            raise
        limits.clear_login_failures(username)
        return cleaned


class ThrottledLoginView(LoginView):
    form_class = ThrottledAuthenticationForm

    def get_context_data(self, **kwargs):
        return super().get_context_data(signup_open=settings.CHAT_SIGNUP_OPEN, **kwargs)


class SignupForm(UserCreationForm):
    email = forms.EmailField(required=False, help_text="Optional; used only to reset a forgotten password.")

    class Meta(UserCreationForm.Meta):
        fields = ["username", "email"]


def signup(request):
    if not settings.CHAT_SIGNUP_OPEN:
        raise Http404("Sign-up is closed on this site.")
    form = SignupForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        user = form.save()
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        return redirect("chat:home")
    return render(request, "registration/signup.html", {"form": form})
