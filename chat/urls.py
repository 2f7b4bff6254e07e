from django.urls import path

from chat import views

app_name = "chat"

urlpatterns = [
    path("", views.home, name="home"),
    path("c/new/", views.start, name="start"),
    path("c/<uuid:conversation_id>/", views.conversation, name="conversation"),
    path("c/<uuid:conversation_id>/rename/", views.rename, name="rename"),
    path("c/<uuid:conversation_id>/instructions/", views.instructions, name="instructions"),
    path("c/<uuid:conversation_id>/delete/", views.delete, name="delete"),
    path("search/", views.search, name="search"),
    path("budget/", views.budget, name="budget"),
]
