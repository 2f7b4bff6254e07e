from django.urls import path

from chat import uploads, views

app_name = "chat"

urlpatterns = [
    path("", views.home, name="home"),
    path("c/<uuid:conversation_id>/", views.conversation, name="conversation"),
    path("c/<uuid:conversation_id>/rename/", views.rename, name="rename"),
    path("c/<uuid:conversation_id>/instructions/", views.instructions, name="instructions"),
    path("c/<uuid:conversation_id>/delete/", views.delete, name="delete"),
    path("search/", views.search, name="search"),
    # Attachments (chat/uploads.py).
    path("uploads/", uploads.upload, name="upload"),
    path("uploads/<uuid:attachment_id>/", uploads.detail, name="upload_detail"),
    path("uploads/<uuid:attachment_id>/delete/", uploads.delete, name="upload_delete"),
]
