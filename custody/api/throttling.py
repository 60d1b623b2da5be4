"""Rate limits (rates in settings ``REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]``, e.g. ``"1200/min"``).

Every request is counted against each limit that applies to it:

- ``user``: per signed-in user; ``anon``: per client address for anonymous requests;
- ``ip``: per client address for every request, signed in or not (one machine cannot hide behind many
  tokens);
- ``login`` (sign-in) and ``callbacks`` (channel callbacks): per client address, on views naming that
  ``throttle_scope``.

Each limit is a fixed-window counter in the cache. ``ApiRateLimits`` counts all of a request's limits at once:
on Redis with one command (a Lua script that does ``INCR``, and ``EXPIRE`` on a new counter, for each key,
atomically), elsewhere with the cache's ``add``/``incr``. Throttling runs on every API request, reads
included, so it is kept cheap: rates parsed once, keys made without the cache's memcached-style key
validation (Redis takes any key; ours are a scope, a user id or an address, and a window number).
DRF's own throttles keep, per key, the list of every request time in the window and rewrite it on each
request (thousands of floats pickled per call at API rates), one cache round trip or more per throttle.
A client may burst up to twice a rate across a window boundary, which is fine for abuse control.

Counters live in the cache: set ``CACHE_URL`` to Redis when several processes serve the API, so they share
them. The client address is the one django-axes resolves (``get_client_ip_address``).
"""

from __future__ import annotations

import time
from functools import lru_cache
from typing import Any

from axes.helpers import get_client_ip_address
from django.core.cache import cache, caches
from django.core.cache.backends.redis import RedisCache
from rest_framework.request import Request
from rest_framework.settings import api_settings
from rest_framework.throttling import BaseThrottle

_PERIODS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@lru_cache(maxsize=64)
def parse_rate(rate: str) -> tuple[int, int]:
    """``"1200/min"`` -> (1200, 60)."""
    count, period = rate.split("/")
    return int(count), _PERIODS[period.strip()[0]]


def client_address(request: Request) -> str:
    return get_client_ip_address(getattr(request, "_request", request)) or "unknown"


class ApiRateLimits(BaseThrottle):
    """The one ``DEFAULT_THROTTLE_CLASSES`` entry: every limit of the request, counted together."""

    THROTTLE_RATES: dict[str, Any] = dict(api_settings.DEFAULT_THROTTLE_RATES)

    def __init__(self) -> None:
        self._wait = 0.0

    def limits(self, request: Request, view: Any) -> list[tuple[str, str]]:
        """(scope, identity) of every limit that applies to this request."""
        address = client_address(request)
        user = request.user
        found = [
            ("user", str(user.pk)) if user and user.is_authenticated else ("anon", address),
            ("ip", address),
        ]
        scope = getattr(view, "throttle_scope", None)
        if scope:
            found.append((scope, address))
        return [(s, ident) for s, ident in found if self.THROTTLE_RATES.get(s)]

    def allow_request(self, request: Request, view: Any) -> bool:
        now = time.time()
        counters = []
        for scope, ident in self.limits(request, view):
            count, period = parse_rate(self.THROTTLE_RATES[scope])
            window = int(now // period)
            counters.append(
                (f"throttle:{scope}:{ident}:{window}", count, period, (window + 1) * period - now)
            )
        if not counters:
            return True
        used = _count(counters)
        waits = [wait for (_, count, _, wait), n in zip(counters, used, strict=True) if n > count]
        if waits:
            self._wait = max(waits)
            return False
        return True

    def wait(self) -> float:
        return max(self._wait, 1.0)


# Adds one to each key (KEYS) and returns the new counts; a counter just created gets its expiry (ARGV, in
# the keys' order) in the same atomic step, so no counter outlives its window.
_INCREMENT = """
local counts = {}
for i, key in ipairs(KEYS) do
  counts[i] = redis.call('INCR', key)
  if counts[i] == 1 then redis.call('EXPIRE', key, ARGV[i]) end
end
return counts
"""


def _redis_increment(backend: RedisCache) -> Any:
    """The increment script on the backend's Redis client, made once and kept on the backend (Django's cache
    makes a new client, with its table of ~170 response callbacks, on every call; the client and its
    connection pool are thread-safe). Calling it sends EVALSHA, loading the script on first use."""
    script = getattr(backend, "_custody_throttle_increment", None)
    if script is None:
        script = backend._cache.get_client(write=True).register_script(_INCREMENT)
        backend._custody_throttle_increment = script  # type: ignore[attr-defined]
    return script


def _count(counters: list[tuple[str, int, int, float]]) -> list[int]:
    """Add one to each counter and return the new values."""
    backend = caches["default"]
    if isinstance(backend, RedisCache):
        replies = _redis_increment(backend)(
            keys=[backend.make_key(key) for key, _, _, _ in counters],
            args=[period + 1 for _, _, period, _ in counters],
        )
        return [int(reply) for reply in replies]
    values = []
    for key, _, period, _ in counters:
        if cache.add(key, 1, timeout=period + 1):
            values.append(1)
            continue
        try:
            values.append(int(cache.incr(key)))
        except ValueError:  # expired between add and incr: a new window
            cache.set(key, 1, timeout=period + 1)
            values.append(1)
    return values
