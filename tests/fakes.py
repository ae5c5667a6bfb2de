"""Test doubles shared by several test files."""

from __future__ import annotations


class FakeResponse:
    """What ``urllib.request.urlopen`` returns, serving ``payload`` from memory (a download without a network):
    ``read(n)`` in chunks, a Content-Length header, an HTTP ``status`` (206 for a Range request)."""

    def __init__(self, payload: bytes, status: int = 200):
        self.payload, self.status = payload, status
        self.headers = {"Content-Length": str(len(payload))}

    def read(self, n: int) -> bytes:
        chunk, self.payload = self.payload[:n], self.payload[n:]
        return chunk

    def __enter__(self) -> FakeResponse:
        return self

    def __exit__(self, *exc) -> bool:
        return False
