from django.apps import AppConfig
from django.contrib.admin import apps as admin_apps


class ChatConfig(AppConfig):
    name = "chat"
    verbose_name = "Chat"
    default_auto_field = "django.db.models.BigAutoField"
    # The one default configuration of this module, which also holds the admin's below.
    default = True

    def ready(self):
        from chat import attachments, login_throttle, signals  # noqa: F401  (connect the receivers)


class ChatAdminConfig(admin_apps.AdminConfig):
    """Django's admin with chat.admin_site.ChatAdminSite as `admin.site` (named in INSTALLED_APPS)."""

    default = False
    default_site = "chat.admin_site.ChatAdminSite"
