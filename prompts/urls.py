"""Prompts pages (``/prompts/``) and the chat composer's picker."""

from __future__ import annotations

from django.urls import path

from prompts import views

app_name = "prompts"

urlpatterns = [
    path("", views.prompt_list, name="list"),
    path("chains/", views.chain_list, name="chains"),
    path("chains/new", views.chain_edit, name="chain-create"),
    path("chains/<int:chain_id>/edit", views.chain_edit, name="chain-edit"),
    path("chains/<int:chain_id>/delete", views.chain_delete, name="chain-delete"),
    path("new", views.prompt_create, name="create"),
    path("import", views.prompt_import, name="import"),
    path("picker", views.picker, name="picker"),
    path("reformulation", views.prompt_reformulation, name="reformulation"),
    path("<int:prompt_id>/", views.prompt_detail, name="detail"),
    path("<int:prompt_id>/edit", views.prompt_edit, name="edit"),
    path("<int:prompt_id>/diff", views.prompt_diff, name="diff"),
    path("<int:prompt_id>/label", views.prompt_label, name="label"),
    path("<int:prompt_id>/restore", views.prompt_restore, name="restore"),
    path("<int:prompt_id>/share", views.prompt_share, name="share"),
    path("<int:prompt_id>/delete", views.prompt_delete, name="delete"),
    path("<int:prompt_id>/export", views.prompt_export, name="export"),
    path("<int:prompt_id>/fill", views.picker_fill, name="picker-fill"),
    path("<int:prompt_id>/render", views.picker_render, name="picker-render"),
]
