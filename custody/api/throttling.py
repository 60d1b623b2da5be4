"""Rate limits (rates in settings ``REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]``, e.g. ``"1200/min"``):

- ``user``: per signed-in user; ``anon``: per client address for anonymous requests;
- ``ip``: per client address for every request, signed in or not (one machine cannot hide behind many
  tokens);
- ``login`` (sign-in) and ``callbacks`` (channel callbacks): per client address, on views naming that
  ``throttle_scope``.

Each limit is a fixed-window counter in the cache: one atomic ``incr`` per request (``add`` opens a window).
DRF's own throttles keep, per key, the list of every request time in the window and rewrite it on each
request, which at API rates means pickling thousands of floats per call; a counter costs the same at any rate.
A client may burst up to twice the rate across a window boundary, which is fine for abuse control.

Counters live in the cache: set ``CACHE_URL`` to Redis when several processes serve the API, so they share
them. The client address is the one django-axes resolves (``get_client_ip_address``).
"""

from __future__ import annotations

import time
from typing import Any

from axes.helpers import get_client_ip_address
from django.core.cache import cache
from rest_framework.request import Request
from rest_framework.settings import api_settings
from rest_framework.throttling import BaseThrottle

_PERIODS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_rate(rate: str) -> tuple[int, int]:
    """``"1200/min"`` -> (1200, 60)."""
    count, period = rate.split("/")
    return int(count), _PERIODS[period.strip()[0]]


def client_address(request: Request) -> str:
    return get_client_ip_address(getattr(request, "_request", request)) or "unknown"


class WindowThrottle(BaseThrottle):
    """Allow ``count`` requests per ``period`` seconds per identity; subclasses say whose and which rate."""

    scope = ""
    THROTTLE_RATES: dict[str, Any] = dict(api_settings.DEFAULT_THROTTLE_RATES)

    def __init__(self) -> None:
        self._wait = 0.0

    def rate(self, view: Any) -> str | None:
        return self.THROTTLE_RATES.get(self.scope)

    def identity(self, request: Request, view: Any) -> str | None:  # pragma: no cover - overridden
        raise NotImplementedError

    def allow_request(self, request: Request, view: Any) -> bool:
        rate = self.rate(view)
        ident = self.identity(request, view) if rate else None
        if rate is None or ident is None:
            return True
        count, period = parse_rate(rate)
        now = time.time()
        window = int(now // period)
        key = f"throttle:{self.scope}:{ident}:{window}"
        if cache.add(key, 1, timeout=period + 1):
            return True
        try:
            used = cache.incr(key)
        except ValueError:  # expired between add and incr: a new window
            cache.set(key, 1, timeout=period + 1)
            return True
        if used <= count:
            return True
        self._wait = (window + 1) * period - now
        return False

    def wait(self) -> float:
        return max(self._wait, 1.0)


class UserThrottle(WindowThrottle):
    scope = "user"

    def identity(self, request: Request, view: Any) -> str | None:
        user = request.user
        return str(user.pk) if user and user.is_authenticated else None


class AnonThrottle(WindowThrottle):
    scope = "anon"

    def identity(self, request: Request, view: Any) -> str | None:
        user = request.user
        return None if user and user.is_authenticated else client_address(request)


class PerAddressThrottle(WindowThrottle):
    scope = "ip"

    def identity(self, request: Request, view: Any) -> str | None:
        return client_address(request)


class ScopedThrottle(WindowThrottle):
    """Per client address, for views that name a ``throttle_scope`` (sign-in, callbacks)."""

    def rate(self, view: Any) -> str | None:
        self.scope = getattr(view, "throttle_scope", "") or ""
        return self.THROTTLE_RATES.get(self.scope) if self.scope else None

    def identity(self, request: Request, view: Any) -> str | None:
        return client_address(request)
