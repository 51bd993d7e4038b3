"""A fast reachability check: TFDS retries a download for minutes offline, this says so in seconds."""

from __future__ import annotations

import concurrent.futures
import socket


def probe(host: str, port: int, timeout_s: float) -> str | None:
    """Return None if host:port accepts a TCP connection within timeout_s, else the reason.

    Runs in a thread because name resolution (getaddrinfo) has no timeout of its own.
    """

    def connect() -> None:
        socket.create_connection((host, port), timeout=timeout_s).close()

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        pool.submit(connect).result(timeout=timeout_s)
        return None
    except concurrent.futures.TimeoutError:
        return f"no answer from {host}:{port} within {timeout_s:g}s"
    except OSError as e:
        return f"{host}:{port} unreachable ({e})"
    finally:
        pool.shutdown(wait=False)
