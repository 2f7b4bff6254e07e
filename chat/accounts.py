"""Account pages beyond Django's own views: throttled password checks, optional sign-up, settings.

Every form here that checks a password goes through authenticate(), where chat.login_throttle
counts and refuses attempts; the forms only turn a refusal into its sentence.
"""

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.admin.forms import AdminAuthenticationForm, AdminPasswordChangeForm
from django.contrib.auth import authenticate, login
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import AuthenticationForm, PasswordChangeForm, UserCreationForm
from django.contrib.auth.views import LoginView, PasswordChangeView
from django.http import Http404, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from chat import limits, login_throttle, providers
from chat.models import AccountSettings, Conversation


class ThrottledLoginMixin:
    """Says "Too many failed attempts …" when the throttle refused the check, instead of "wrong password"."""

    def get_invalid_login_error(self):
        refusal = login_throttle.refusal_of(self.request)
        if refusal is not None:
            return forms.ValidationError(refusal.message, code="throttled")
        return super().get_invalid_login_error()


class ThrottledAuthenticationForm(ThrottledLoginMixin, AuthenticationForm):
    """The site's login form (/accounts/login/)."""


class ThrottledAdminAuthenticationForm(ThrottledLoginMixin, AdminAuthenticationForm):
    """The admin's login form (/admin/login/), under the same rule as the site's."""


class ThrottledLoginView(LoginView):
    form_class = ThrottledAuthenticationForm

    def get_context_data(self, **kwargs):
        return super().get_context_data(signup_open=settings.CHAT_SIGNUP_OPEN, **kwargs)


class ThrottledPasswordChangeMixin:
    """The old password is a password guess like any other: someone holding a stolen session must
    not try passwords at will. It is checked with authenticate(), under the login throttle."""

    def __init__(self, user, *args, request=None, **kwargs):
        self.request = request
        super().__init__(user, *args, **kwargs)

    def clean_old_password(self):
        old_password = self.cleaned_data["old_password"]
        checked = authenticate(self.request, username=self.user.get_username(), password=old_password)
        if checked is None or checked.pk != self.user.pk:
            refusal = login_throttle.refusal_of(self.request)
            if refusal is not None:
                raise forms.ValidationError(refusal.message, code="throttled")
            raise forms.ValidationError(self.error_messages["password_incorrect"], code="password_incorrect")
        login_throttle.succeeded(self.request)
        return old_password


class ThrottledPasswordChangeForm(ThrottledPasswordChangeMixin, PasswordChangeForm):
    pass


class ThrottledAdminPasswordChangeForm(ThrottledPasswordChangeMixin, AdminPasswordChangeForm):
    pass


class ThrottledPasswordChangeView(PasswordChangeView):
    form_class = ThrottledPasswordChangeForm

    def get_form_kwargs(self):
        return {**super().get_form_kwargs(), "request": self.request}


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


class SettingsForm(forms.ModelForm):
    """The settings page: defaults for new chats and the theme (chat.models.AccountSettings)."""

    class Meta:
        model = AccountSettings
        fields = ["default_model", "default_instructions", "theme"]
        labels = {"default_instructions": "Instructions for new chats", "default_model": "Model for new chats"}
        widgets = {
            "default_instructions": forms.Textarea(
                attrs={"rows": 4, "placeholder": "e.g. Answer briefly, in British English."}
            ),
            "theme": forms.RadioSelect,
        }

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Only the models offered now; a default that is no longer offered reads as the site's.
        offered = providers.providers()
        self.fields["default_model"] = forms.ChoiceField(
            label="Model for new chats",
            choices=[(provider.model, provider.label) for provider in offered],
            initial=self.instance.model_for_new_chats,
        )
        self.initial["default_model"] = self.instance.model_for_new_chats
        self.fields[
            "default_instructions"
        ].help_text = "Sent to the model with every answer of a new chat; each chat can change its own."

    def clean_default_instructions(self):
        try:
            return Conversation.clean_instructions(self.cleaned_data["default_instructions"])
        except ValueError as error:
            raise forms.ValidationError(str(error)) from None


@login_required
def settings_page(request):
    form = SettingsForm(request.POST or None, instance=AccountSettings.of(request.user))
    if request.method == "POST" and form.is_valid():
        form.save()
        messages.success(request, "Settings saved.")
        return redirect("settings")
    return render(
        request,
        "registration/settings.html",
        {"form": form, "budget": limits.budget_status(request.user), "usage": limits.usage_today(request.user)},
    )


@login_required
@require_POST
def theme(request):
    """The header's Theme button, for a signed-in user: the choice is kept with the account."""
    chosen = request.POST.get("theme", "")
    if chosen not in AccountSettings.Theme.values:
        return JsonResponse({"error": {"code": "invalid", "message": "No such theme."}}, status=400)
    AccountSettings.objects.update_or_create(user=request.user, defaults={"theme": chosen})
    return JsonResponse({"theme": chosen})
