"""The admin site: Django's own, with its password forms throttled and autocomplete kept to what is declared.

It replaces the default site through chat.apps.ChatAdminConfig (INSTALLED_APPS), so `admin.site`
everywhere is this one.
"""

from django.apps import apps
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.urls import reverse

from chat.accounts import (
    ThrottledAdminAuthenticationForm,
    ThrottledAdminPasswordChangeForm,
    ThrottledPasswordChangeView,
)


class ChatAdminSite(admin.AdminSite):
    login_form = ThrottledAdminAuthenticationForm
    # The side list of models took 300 px of every page: at 1280 px the conversation list beside
    # its filters had room left for titles of a word a line and clipped its last column. The
    # breadcrumbs and the index lead to the few models there are.
    enable_nav_sidebar = False

    def password_change(self, request, extra_context=None):
        """Django's view with the throttled form: the old password is checked like a login."""
        defaults = {
            "form_class": ThrottledAdminPasswordChangeForm,
            "success_url": reverse("admin:password_change_done", current_app=self.name),
            "extra_context": {**self.each_context(request), **(extra_context or {})},
        }
        if self.password_change_template is not None:
            defaults["template_name"] = self.password_change_template
        request.current_app = self.name
        return ThrottledPasswordChangeView.as_view(**defaults)(request)

    def autocomplete_view(self, request):
        """Answers only for a field some admin or inline declares in `autocomplete_fields`.

        Django's view serves any foreign key whose target admin has `search_fields`, declared or
        not: `?app_label=chat&model_name=message&field_name=conversation&term=…` searched
        transcript text and answered with matches, unaudited. None of ours declares one.
        """
        asked = (request.GET.get(name) for name in ("app_label", "model_name", "field_name"))
        if not self.declares_autocomplete(request, *asked):
            raise PermissionDenied
        return super().autocomplete_view(request)

    def declares_autocomplete(self, request, app_label, model_name, field_name):
        try:
            source = apps.get_model(app_label, model_name)
        except (LookupError, ValueError, TypeError):
            return False
        for model in apps.get_models():
            if not self.is_registered(model):
                continue
            model_admin = self.get_model_admin(model)
            if model is source and field_name in model_admin.get_autocomplete_fields(request):
                return True
            for inline in model_admin.get_inline_instances(request):
                if inline.model is source and field_name in inline.get_autocomplete_fields(request):
                    return True
        return False
