"""Views that belong to no single app."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render


def home(request: HttpRequest) -> HttpResponse:
    """Send visitors to sign-in; signed-in users see their start page."""
    if not request.user.is_authenticated:
        return redirect("account_login")
    return render(request, "home.html")
