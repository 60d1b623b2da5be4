"""Root URLs: the admin, a health check, the API, the language switch and the web pages (at the root)."""

from django.contrib import admin
from django.db import DatabaseError, connection
from django.http import HttpRequest, JsonResponse
from django.urls import include, path, re_path
from django_otp.admin import OTPAdminSite
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from custody.api.urls import not_found as api_not_found

# The admin site admits only users who verified a TOTP device (django-otp): administrators use two factors,
# as regulators and bank operators do.
admin.site.__class__ = OTPAdminSite


def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness and database check for load balancers and `make run` smoke tests."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except DatabaseError:
        return JsonResponse({"status": "error", "database": connection.vendor}, status=503)
    return JsonResponse({"status": "ok", "database": connection.vendor})


urlpatterns = [
    path("admin/", admin.site.urls),
    path("healthz", healthz, name="healthz"),
    # The REST API (custody/api/, docs/api.md), its OpenAPI 3 schema and interactive docs.
    path("api/v1/", include("custody.api.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    re_path(r"^api/", api_not_found),
    # The language switch (Django's set_language) and the web pages for the three roles (custody/web/).
    path("i18n/", include("django.conf.urls.i18n")),
    path("", include("custody.web.urls")),
]
