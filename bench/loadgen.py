"""A small closed-loop HTTP/1.1 load generator for the API benchmarks, for machines without ``wrk``.

One process, one thread, non-blocking sockets on a ``selectors`` loop: ``--connections`` keep-alive
connections each send a GET, read the whole response (``Content-Length`` framed, as Django's CommonMiddleware
sets it) and send the next, for ``--seconds``. Requests are prepared bytes (one per bearer token, used in
turn), so a request costs the client a few tens of microseconds of CPU, a small fraction of what the server
spends (the benchmark reports both). A thread-per-connection client with ``http.client`` costs several times
more and, holding the GIL, adds its own queueing to the latencies it measures.

    python bench/loadgen.py --url http://127.0.0.1:8000/api/v1/parent/balance/ --tokens tokens.json \
        --connections 16 --seconds 20

prints one line ``RESULT {json}`` with the fields wrk's script of bench_api.py prints: requests,
duration_us, socket_errors, non2xx, p50_us, p99_us, max_us.
"""

from __future__ import annotations

import argparse
import json
import selectors
import socket
import time
from typing import Any
from urllib.parse import urlsplit


class _Connection:
    __slots__ = ("address", "buffer", "sent_at", "sock", "to_send")

    def __init__(self, address: tuple[str, int]) -> None:
        self.address = address
        self.sock = socket.create_connection(address, timeout=5)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(False)
        self.buffer = b""
        self.to_send = b""
        self.sent_at = 0.0


def _response_length(head: bytes) -> tuple[int, int]:
    """(status, Content-Length) of a response head; a response without Content-Length is an error here."""
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return status, int(value.strip())
    raise ValueError(f"response without Content-Length: {head[:200]!r}")


def run(
    url: str, tokens: list[str], connections: int, seconds: float, timeout: float = 5.0
) -> dict[str, Any]:
    parts = urlsplit(url)
    address = (parts.hostname or "127.0.0.1", parts.port or 80)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    requests = [
        (
            f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nAuthorization: Bearer {token}\r\n"
            "Accept: application/json\r\n\r\n"
        ).encode()
        for token in tokens
    ]
    selector = selectors.DefaultSelector()
    latencies: list[float] = []
    failures = {"socket_errors": 0, "non2xx": 0}
    counter = 0

    def send_next(conn: _Connection) -> None:
        nonlocal counter
        counter += 1
        conn.to_send = requests[counter % len(requests)]
        conn.buffer = b""
        conn.sent_at = time.perf_counter()
        sent = conn.sock.send(conn.to_send)
        conn.to_send = conn.to_send[sent:]
        selector.modify(conn.sock, selectors.EVENT_WRITE if conn.to_send else selectors.EVENT_READ, conn)

    def reopen(conn: _Connection) -> _Connection:
        failures["socket_errors"] += 1
        selector.unregister(conn.sock)
        conn.sock.close()
        fresh = _Connection(address)
        selector.register(fresh.sock, selectors.EVENT_READ, fresh)
        send_next(fresh)
        return fresh

    begun = time.perf_counter()
    stop = begun + seconds
    for _ in range(connections):
        conn = _Connection(address)
        selector.register(conn.sock, selectors.EVENT_READ, conn)
        send_next(conn)
    active = connections
    while active:
        now = time.perf_counter()
        events = selector.select(timeout=0.5)
        if not events:
            for key in list(selector.get_map().values()):
                stale: _Connection = key.data
                if now - stale.sent_at > timeout:
                    reopen(stale)
            continue
        for key, mask in events:
            conn = key.data
            try:
                if mask & selectors.EVENT_WRITE:
                    sent = conn.sock.send(conn.to_send)
                    conn.to_send = conn.to_send[sent:]
                    if not conn.to_send:
                        selector.modify(conn.sock, selectors.EVENT_READ, conn)
                    continue
                chunk = conn.sock.recv(65536)
                if not chunk:
                    raise ConnectionResetError("closed by the server")
            except OSError:
                reopen(conn)
                continue
            conn.buffer += chunk
            end = conn.buffer.find(b"\r\n\r\n")
            if end < 0:
                continue
            status, length = _response_length(conn.buffer[:end])
            if len(conn.buffer) < end + 4 + length:
                continue
            finished = time.perf_counter()
            latencies.append(finished - conn.sent_at)
            if not 200 <= status < 300:
                failures["non2xx"] += 1
            if finished < stop:
                send_next(conn)
            else:
                selector.unregister(conn.sock)
                conn.sock.close()
                active -= 1
    elapsed = time.perf_counter() - begun
    if not latencies:
        raise RuntimeError("no request completed")
    latencies.sort()
    return {
        "requests": len(latencies),
        "duration_us": int(elapsed * 1e6),
        **failures,
        "p50_us": int(latencies[len(latencies) // 2] * 1e6),
        "p99_us": int(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1e6),
        "max_us": int(latencies[-1] * 1e6),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", required=True)
    parser.add_argument("--tokens", required=True, help="a JSON file holding a list of bearer tokens")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    with open(args.tokens) as file:
        tokens = json.load(file)
    result = run(args.url, tokens, args.connections, args.seconds)
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
