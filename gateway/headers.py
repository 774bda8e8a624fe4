"""Header hygiene in both directions.

RFC 9110 §7.6.1: "Intermediaries MUST parse a received Connection header field
before a message is forwarded and, for each connection-option in this field,
remove any header or trailer field(s) from the message with the same name as the
connection-option, and then remove the Connection header field itself (or replace
it with the intermediary's own control options for the forwarded message)."

We go further than stripping: requests to an upstream and answers to a caller
are *built* from allowlists, so cookies, the caller's credentials, forged internal
headers (``X-Gateway-*``) and framing headers can never cross the gateway.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from gateway.errors import BadRequest, PayloadTooLarge

_CLOSE = {"Connection": "close"}  # so the server drops a body it will not read

# RFC 9110 §7.6.1 names these; ``keep-alive`` and ``proxy-connection`` are the
# legacy ones every proxy strips too.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)

# What a caller's request may contribute to the upstream request.
# RFC 9112 §3.2: "A server MUST respond with a 400 (Bad Request) status code to any
# HTTP/1.1 request message that lacks a Host header field and to any request message
# that contains more than one Host header field line or a Host header field with an
# invalid field value." Host = uri-host [ ":" port ]; no userinfo, no path.
_HOST = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252})|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?"
)

FORWARDED_REQUEST_HEADERS = frozenset({"accept", "accept-language", "content-type"})

MAX_HEADER_VALUE = 8 * 1024


def strip_hop_by_hop(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Remove RFC 9110 hop-by-hop fields and every field named in ``Connection``."""
    pairs = list(headers)
    named = {
        option.strip().lower()
        for name, value in pairs
        if name == "connection"
        for option in value.split(",")
    }
    return [(n, v) for n, v in pairs if n not in HOP_BY_HOP and n not in named]


class InboundHeaders:
    """The caller's headers, decoded once and checked for ambiguity.

    Names arrive lower-cased from the ASGI server. A name with ``_`` is refused,
    because some servers treat ``X_Purpose`` as ``X-Purpose`` (Envoy's
    ``headers_with_underscores_action: REJECT_REQUEST``).
    """

    __slots__ = ("_by_name", "_pairs")

    def __init__(self, raw: Iterable[tuple[bytes, bytes]]) -> None:
        pairs: list[tuple[str, str]] = []
        by_name: dict[str, list[str]] = {}
        for name_b, value_b in raw:
            name = name_b.decode("latin-1")
            if "_" in name:
                raise BadRequest(
                    "header names with an underscore are refused", code="request.invalid_header"
                )
            value = value_b.decode("latin-1")
            if any(c in value for c in "\x00\r\n"):
                raise BadRequest(
                    "header values must not contain NUL, CR or LF", code="request.invalid_header"
                )
            if len(value) > MAX_HEADER_VALUE:
                raise BadRequest("a header value is too long", code="request.header_too_large")
            pairs.append((name, value))
            by_name.setdefault(name, []).append(value)
        # Indexed once: every later question is a dict lookup, not a scan.
        self._pairs = pairs
        self._by_name = by_name

    def check_host(self, http_version: str) -> None:
        """Exactly one valid Host on HTTP/1.1 (RFC 9112 §3.2); never used for routing."""
        hosts = self._by_name.get("host", ())
        valid = len(hosts) == 1 and _HOST.fullmatch(hosts[0]) is not None
        if not valid and (hosts or http_version != "1.0"):
            raise BadRequest(
                "the Host header is missing, repeated or invalid", code="request.invalid_host"
            )

    def check_no_body(self, limit: int) -> None:
        """A lookup carries no body; a declared body is refused before it is read."""
        length = self.get_one("content-length", code="request.invalid_header")
        chunked = "transfer-encoding" in self._by_name
        if length is not None and length.isdigit() and int(length) > limit:
            raise PayloadTooLarge(f"request bodies are limited to {limit} bytes", headers=_CLOSE)
        if chunked or (length is not None and length != "0"):
            raise BadRequest(
                "this request takes no body", code="request.body_not_allowed", headers=_CLOSE
            )

    def get_one(self, name: str, *, code: str) -> str | None:
        """The single value of ``name``; two values are an error, never a choice."""
        found = self._by_name.get(name)
        if found is None:
            return None
        if len(found) > 1:
            raise BadRequest(f"the {name} header was sent more than once", code=code)
        return found[0]

    def forwardable(self) -> list[tuple[str, str]]:
        """The few fields a vendor gets, less any the caller's ``Connection`` names
        (none of them is hop-by-hop by itself)."""
        pairs = [(n, v) for n, v in self._pairs if n in FORWARDED_REQUEST_HEADERS]
        connection = self._by_name.get("connection")
        if pairs and connection:
            return strip_hop_by_hop([*(("connection", v) for v in connection), *pairs])
        return pairs
