from django.urls import path

from chat import views

app_name = "chat"

urlpatterns = [
    path("", views.home, name="home"),
    path("c/<uuid:conversation_id>/", views.conversation, name="conversation"),
    path("c/<uuid:conversation_id>/rename/", views.rename, name="rename"),
    path("c/<uuid:conversation_id>/instructions/", views.instructions, name="instructions"),
    path("c/<uuid:conversation_id>/delete/", views.delete, name="delete"),
    path("search/", views.search, name="search"),
    path("c/<uuid:conversation_id>/pin/", views.pin, name="pin"),
    path("c/<uuid:conversation_id>/archive/", views.archive, name="archive"),
    path("c/<uuid:conversation_id>/export.md", views.export_markdown, name="export_markdown"),
    path("export/", views.export_all, name="export"),
    path("import/", views.import_chats, name="import"),
]
