"""A plain HTTP client for the REST suites (the standard library only), and the
binary tensor extension written out by hand, as a client in any language would."""

from __future__ import annotations

import json
import struct
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

import numpy as np

HEADER_LENGTH = "Inference-Header-Content-Length"


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        length = self.headers.get(HEADER_LENGTH)
        return json.loads(self.body[: int(length)] if length else self.body)

    def binary(self) -> bytes:
        """The binary tail after the JSON header."""
        return self.body[int(self.headers[HEADER_LENGTH]) :]


def call(
    url: str,
    body: bytes | dict | None = None,
    headers: dict[str, str] | None = None,
    method: str | None = None,
    timeout: float = 60,
) -> Reply:
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    headers = dict(headers or {})
    if data is not None and not any(k.lower() == "content-type" for k in headers):
        headers["Content-Type"] = "application/json"  # urllib's default is a form encoding
    request = urllib.request.Request(
        url, data=data, headers=headers, method=method or ("GET" if data is None else "POST")
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return Reply(resp.status, dict(resp.headers), resp.read())
    except urllib.error.HTTPError as err:
        return Reply(err.code, dict(err.headers), err.read())


def binary_request(
    inputs: list[tuple[str, str, list[int], bytes]], outputs: list[dict] | None = None
) -> tuple[bytes, dict[str, str]]:
    """JSON header naming each input's binary_data_size, then the bytes: body and headers."""
    doc: dict[str, Any] = {
        "inputs": [
            {"name": n, "datatype": t, "shape": s, "parameters": {"binary_data_size": len(b)}}
            for n, t, s, b in inputs
        ]
    }
    if outputs is not None:
        doc["outputs"] = outputs
    header = json.dumps(doc).encode()
    body = header + b"".join(b for *_, b in inputs)
    return body, {HEADER_LENGTH: str(len(header)), "Content-Type": "application/octet-stream"}


def length_prefixed(elements: list[bytes]) -> bytes:
    """BYTES elements as Triton serialises them: a 4-byte little-endian length before each."""
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def fp32(x: np.ndarray) -> bytes:
    return np.ascontiguousarray(x, dtype="<f4").tobytes()
