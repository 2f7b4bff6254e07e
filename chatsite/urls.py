from django.contrib import admin
from django.urls import include, path

from chat import accounts
from chat.localmodel import views as local_model

urlpatterns = [
    path("accounts/login/", accounts.ThrottledLoginView.as_view(), name="login"),
    path("accounts/signup/", accounts.signup, name="signup"),
    # Logout, password change and password reset are Django's own views.
    path("accounts/", include("django.contrib.auth.urls")),
    path("admin/", admin.site.urls),
    path("local/v1/responses", local_model.responses, name="local_model_responses"),
    path("", include("chat.urls")),
]
