from django.contrib import admin
from django.urls import include, path

from chat import accounts, health
from chat import views as chat_views

urlpatterns = [
    # Probes for load balancers and service managers (docs/deploy.md).
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("accounts/login/", accounts.ThrottledLoginView.as_view(), name="login"),
    path("accounts/signup/", accounts.signup, name="signup"),
    # The old password is checked under the login throttle, like a login.
    path("accounts/password_change/", accounts.ThrottledPasswordChangeView.as_view(), name="password_change"),
    path("accounts/settings/", accounts.settings_page, name="settings"),
    path("accounts/settings/theme/", accounts.theme, name="settings-theme"),
    # Logout, the rest of password change and password reset are Django's own views.
    path("accounts/", include("django.contrib.auth.urls")),
    path("admin/", admin.site.urls),
    # Browsers ask for it whatever the page says.
    path("favicon.ico", chat_views.favicon),
    path("", include("chat.urls")),
]
