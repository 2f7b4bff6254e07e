from django.urls import path, re_path

from chat import uploads, views

app_name = "chat"

urlpatterns = [
    path("", views.home, name="home"),
    path("c/new/", views.start, name="start"),
    path("c/<uuid:conversation_id>/", views.conversation, name="conversation"),
    path("c/<uuid:conversation_id>/rename/", views.rename, name="rename"),
    path("c/<uuid:conversation_id>/instructions/", views.instructions, name="instructions"),
    path("c/<uuid:conversation_id>/delete/", views.delete, name="delete"),
    path("search/", views.search, name="search"),
    # Shared links: the owner's endpoints, then the public page and its "Continue this chat".
    path("c/<uuid:conversation_id>/share/", views.share, name="share"),
    path("c/<uuid:conversation_id>/share/revoke/", views.share_revoke, name="share_revoke"),
    re_path(r"^s/(?P<token>[A-Za-z0-9_-]{1,64})/$", views.shared, name="shared"),
    re_path(r"^s/(?P<token>[A-Za-z0-9_-]{1,64})/continue/$", views.shared_continue, name="shared_continue"),
    path("messages/<uuid:message_id>/feedback/", views.feedback, name="feedback"),
    path("c/<uuid:conversation_id>/pin/", views.pin, name="pin"),
    path("c/<uuid:conversation_id>/archive/", views.archive, name="archive"),
    path("c/<uuid:conversation_id>/export.md", views.export_markdown, name="export_markdown"),
    path("export/", views.export_all, name="export"),
    path("import/", views.import_chats, name="import"),
    path("budget/", views.budget, name="budget"),
    # Attachments (chat/uploads.py).
    path("uploads/", uploads.upload, name="upload"),
    path("uploads/<uuid:attachment_id>/", uploads.detail, name="upload_detail"),
    path("uploads/<uuid:attachment_id>/delete/", uploads.delete, name="upload_delete"),
]
