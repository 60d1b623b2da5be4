"""The API's routes as the URL configuration declares them (``django.urls.get_resolver``), for tests that
must cover every endpoint: the permission matrix and Schemathesis."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from django.urls import URLPattern, URLResolver, get_resolver

API_PREFIX = "api/v1/"
METHODS = ("get", "post", "put", "patch", "delete")


@dataclass(frozen=True)
class Route:
    name: str  # "api:parent-contracts"
    route: str  # "api/v1/parent/contracts/<int:pk>/"
    view_class: type
    methods: tuple[str, ...]  # upper case, as the view implements them

    @property
    def has_parameters(self) -> bool:
        return "<" in self.route or "(?P<" in self.route


def _walk(patterns: list, prefix: str, namespace: str) -> Iterator[tuple[str, str, URLPattern]]:
    for pattern in patterns:
        text = prefix + str(pattern.pattern)
        if isinstance(pattern, URLResolver):
            inner = (
                f"{namespace}:{pattern.namespace}" if namespace and pattern.namespace else pattern.namespace
            )
            yield from _walk(pattern.url_patterns, text, inner or namespace)
        elif isinstance(pattern, URLPattern):
            yield text, namespace, pattern


def api_routes() -> list[Route]:
    """Every named view under /api/v1/ with the HTTP methods its class implements."""
    found = []
    for text, namespace, pattern in _walk(get_resolver().url_patterns, "", ""):
        route = text.lstrip("^")
        if not route.startswith(API_PREFIX) or pattern.name is None:
            continue
        view_class = getattr(pattern.callback, "view_class", None)
        if view_class is None:
            continue
        methods = tuple(m.upper() for m in METHODS if hasattr(view_class, m))
        found.append(Route(f"{namespace}:{pattern.name}", route, view_class, methods))
    return found
