"""OTLP/protobuf wire encoding of Tessera's spans (opentelemetry/proto/trace/v1/trace.proto).

The standard exporter encodes ReadableSpans through a protobuf message object per span, attribute,
link and status, ~11 us a span here, five spans a traced request; writing the same bytes directly,
with the attributes that repeat (model, version, routing, protocol, status) encoded once, costs a
fraction of that, on the span processor's thread of a process that may be pinned to one core. The
payload is the ExportTraceServiceRequest the standard exporter would have sent for those spans (a
test decodes both with the official protobuf classes and compares them); the standard exporter
still sends it (`tracing.py`).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from typing import Any

from .protocol.protobuf_wire import length_field as _field
from .protocol.protobuf_wire import varint as _varint

__all__ = ["KIND_INTERNAL", "KIND_SERVER", "STATUS_ERROR", "UNSET_STATUS", "SpanEncoder"]

KIND_INTERNAL, KIND_SERVER = 1, 2
STATUS_ERROR = 2
UNSET_STATUS = b"\x7a\x00"
"""Span.status with code UNSET and no message, as the standard encoder writes it (an empty Status)."""
_HAS_IS_REMOTE, _IS_REMOTE = 0x100, 0x200  # SpanFlags: the parent's remoteness is known / it is remote
_CACHE_LIMIT = 4096


def _any_value(value: Any) -> bytes:
    if isinstance(value, bool):  # before int: bool is an int
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, int):
        return b"\x18" + _varint(value & 0xFFFFFFFFFFFFFFFF)  # int64, two's complement
    if isinstance(value, float):
        return b"\x21" + struct.pack("<d", value)
    return _field(0x0A, str(value).encode())


def _key_value(key: str, value: Any) -> bytes:
    return _field(0x0A, key.encode()) + _field(0x12, _any_value(value))


class SpanEncoder:
    """Encodes spans for one resource and instrumentation scope (not thread-safe: the span
    processor's thread's own)."""

    def __init__(self, resource_attributes: Mapping[str, Any], scope_name: str, scope_version: str | None = None,
                 resource_schema_url: str = "") -> None:
        resource = b"".join(_field(0x0A, _key_value(k, v)) for k, v in resource_attributes.items())
        scope = _field(0x0A, scope_name.encode()) + (_field(0x12, scope_version.encode()) if scope_version else b"")
        self._resource_field = _field(0x0A, resource)  # ResourceSpans.resource
        self._resource_schema = _field(0x1A, resource_schema_url.encode()) if resource_schema_url else b""
        self._scope_field = _field(0x0A, scope)  # ScopeSpans.scope
        self._attributes: dict[tuple[str, type, Any], bytes] = {}

    def attribute(self, key: str, value: Any) -> bytes:
        """Span.attributes' entry for (key, value), encoded once per distinct pair."""
        cache_key = (key, type(value), value)
        encoded = self._attributes.get(cache_key)
        if encoded is None:
            if len(self._attributes) >= _CACHE_LIMIT:
                self._attributes.clear()
            encoded = self._attributes[cache_key] = _field(0x4A, _key_value(key, value))
        return encoded

    @staticmethod
    def unique_attribute(key: str, value: Any) -> bytes:
        """An attribute whose value rarely repeats (a request id): not cached."""
        return _field(0x4A, _key_value(key, value))

    @staticmethod
    def link(trace_id: int, span_id: int, attributes: bytes = b"") -> bytes:
        """Span.links' entry (a local span context); `attributes`: Link.attributes entries made by
        `link_attribute`."""
        body = b"\x0a\x10%b\x12\x08%b%b\x35%b" % (trace_id.to_bytes(16, "big"), span_id.to_bytes(8, "big"),
                                                   attributes, _HAS_IS_REMOTE.to_bytes(4, "little"))
        return _field(0x6A, body)

    @staticmethod
    def link_attribute(key: str, value: Any) -> bytes:
        return _field(0x22, _key_value(key, value))

    @staticmethod
    def status(code: int, message: str = "") -> bytes:
        body = (_field(0x12, message.encode()) if message else b"") + (b"\x18%c" % code if code else b"")
        return _field(0x7A, body)

    def span(self, name: bytes, trace_id: int, span_id: int, parent_span_id: int, remote_parent: bool, kind: int,
             start_ns: int, end_ns: int, attributes: Iterable[bytes] = (), links: Iterable[bytes] = (),
             status: bytes = UNSET_STATUS, trace_state: str = "") -> bytes:
        """One Span, as an entry of ScopeSpans.spans. `name` is the encoded Span.name field
        (`name_field`); a `parent_span_id` of 0 is a root span."""
        flags = _HAS_IS_REMOTE | _IS_REMOTE if remote_parent else _HAS_IS_REMOTE
        body = b"".join((
            b"\x0a\x10", trace_id.to_bytes(16, "big"), b"\x12\x08", span_id.to_bytes(8, "big"),
            _field(0x1A, trace_state.encode()) if trace_state else b"",
            b"\x22\x08" + parent_span_id.to_bytes(8, "big") if parent_span_id else b"",
            name, b"\x30%c\x39" % kind, start_ns.to_bytes(8, "little"), b"\x41", end_ns.to_bytes(8, "little"),
            *attributes, *links, status, b"\x85\x01", flags.to_bytes(4, "little")))
        return _field(0x12, body)

    @staticmethod
    def name_field(name: str) -> bytes:
        return _field(0x2A, name.encode())

    def request(self, spans: Iterable[bytes]) -> bytes:
        """The ExportTraceServiceRequest holding `spans` (entries made by `span`)."""
        scope_spans = self._scope_field + b"".join(spans)
        resource_spans = self._resource_field + _field(0x12, scope_spans) + self._resource_schema
        return _field(0x0A, resource_spans)
