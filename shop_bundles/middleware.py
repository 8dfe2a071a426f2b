"""Request checks shared by the storefront and the admin."""
from __future__ import annotations

from django.http import HttpResponseBadRequest


class RejectNulCharactersMiddleware:
    """Answer 400 to a request whose path, query string or form fields hold a NUL character (U+0000).

    PostgreSQL text cannot hold NUL, so such a value reaching a query (a
    product page ``/products/%00/``, an admin list filter ``?status=%00``, a
    store choice) raised ``ValueError`` deep in the database driver and gave
    a 500. The events API checks its JSON bodies itself
    (``shop_bundles.api``); here only the URL and URL-encoded form bodies are
    read (multipart uploads are left to their views).

    Add it to ``MIDDLEWARE`` after ``SecurityMiddleware`` (the project's
    settings do).
    """

    MESSAGE = "Bad request: the {where} contains a NUL character (%00), which no page of this shop accepts."

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        where = None
        if "\x00" in request.path:
            where = "address"
        elif any("\x00" in k or any("\x00" in v for v in vs) for k, vs in request.GET.lists()):
            where = "query string"
        elif (request.method == "POST" and request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data")
              and any("\x00" in k or any("\x00" in v for v in vs) for k, vs in request.POST.lists())):
            where = "form"
        if where:
            return HttpResponseBadRequest(self.MESSAGE.format(where=where), content_type="text/plain; charset=utf-8")
        return self.get_response(request)
