"""Rate limits (DRF throttles; rates in settings ``REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]``):

- ``user``: per signed-in user; ``anon``: per client address for anonymous requests;
- ``ip``: per client address for every request, signed in or not (one machine cannot hide behind many
  tokens);
- ``login`` (sign-in) and ``callbacks`` (channel callbacks): per client address, on those endpoints only.

Counters live in the cache: set ``CACHE_URL`` to Redis when several processes serve the API, so they share
them. The client address is the one django-axes resolves (``get_client_ip_address``).
"""

from __future__ import annotations

from typing import Any

from axes.helpers import get_client_ip_address
from rest_framework.request import Request
from rest_framework.throttling import SimpleRateThrottle


class PerAddressThrottle(SimpleRateThrottle):
    scope = "ip"

    def get_cache_key(self, request: Request, view: Any) -> str:
        return self.cache_format % {"scope": self.scope, "ident": client_address(request)}


def client_address(request: Request) -> str:
    return get_client_ip_address(getattr(request, "_request", request)) or "unknown"
