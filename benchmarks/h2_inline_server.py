"""A bare-bones gRPC server that runs the model inline: HTTP/2 on an asyncio protocol, no limits, no batching.

    python -m benchmarks.h2_inline_server --model-repository DIR --port 8001 [--host 127.0.0.1]

Issue 13 states two of its targets against "a 150-line HTTP/2 server on an asyncio protocol (uvloop,
header blocks through the `hpack` library, no limits, no flow-control accounting)" running "the small
model inline per request with ONNX Runtime". This is that server: what a gRPC path costs when it does
nothing a production server must. No deadline, size or stream limits, no cancellation, no sending
window kept (answers go out in 16 KiB DATA frames, assumed to fit the client's window), no batching,
no metrics, no drift statistics; an unknown method is answered UNIMPLEMENTED and any failure INTERNAL.
One ONNX Runtime session per model, one thread, run on the event loop for every ModelInfer. The other
RPCs perf_analyzer calls answer what `benchmarks.bare_server` answers (metadata and config from the
graph).

It is a measuring stick, not a server: never expose it.
"""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path
from typing import Any
from urllib.parse import quote

import hpack
import numpy as np

from benchmarks.bare_server import SERVICE_NAME, BareModel, load_models, server_arguments
from server._generated import grpc_service_pb2 as pb

__all__ = ["H2InlineProtocol", "main"]

_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_DATA, _HEADERS, _RST_STREAM, _SETTINGS, _PING, _GOAWAY, _WINDOW_UPDATE, _CONTINUATION = 0, 1, 3, 4, 6, 7, 8, 9
_END_STREAM, _ACK, _END_HEADERS, _PADDED, _PRIORITY = 0x1, 0x1, 0x4, 0x8, 0x20
_FRAME = struct.Struct(">HBBBI")  # length (24 bits: high 16, low 8), type, flags, stream id
_BIG_WINDOW = (1 << 31) - 1
_DATA_FRAME = 16_384  # the smallest MAX_FRAME_SIZE a peer may set: always legal
_NUMPY = {"FP32": np.float32, "FP64": np.float64, "FP16": np.float16, "INT64": np.int64, "INT32": np.int32,
          "UINT8": np.uint8, "INT8": np.int8, "BOOL": np.bool_}


def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return _FRAME.pack(len(payload) >> 8, len(payload) & 0xFF, kind, flags, stream) + payload


def _headers_block(pairs: list[tuple[str, str]]) -> bytes:
    """Never-indexed literals: the block holds no HPACK state, so it is encoded once and sent forever."""
    return hpack.Encoder().encode([hpack.NeverIndexedHeaderTuple(k, v) for k, v in pairs], huffman=False)


_RESPONSE_HEADERS = _headers_block([(":status", "200"), ("content-type", "application/grpc")])
_OK_TRAILERS = _headers_block([("grpc-status", "0")])
_CONSTANT_ANSWERS = {method: message.SerializeToString() for method, message in (
    ("ServerLive", pb.ServerLiveResponse(live=True)), ("ServerReady", pb.ServerReadyResponse(ready=True)),
    ("ModelReady", pb.ModelReadyResponse(ready=True)), ("ServerMetadata", pb.ServerMetadataResponse(name="h2-inline")))}
_UNIMPLEMENTED = _headers_block([(":status", "200"), ("content-type", "application/grpc"), ("grpc-status", "12")])


class InlineModel:
    """One model's session and the answers to the RPCs that do not run it."""

    def __init__(self, path: Path, bare: BareModel) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        self.bare = bare

    def infer(self, request: pb.ModelInferRequest) -> bytes:
        feeds: dict[str, np.ndarray[Any, Any]] = {}
        for index, tensor in enumerate(request.inputs):
            raw = request.raw_input_contents[index]
            feeds[tensor.name] = np.frombuffer(raw, _NUMPY[tensor.datatype]).reshape(tuple(tensor.shape))
        outputs = self.session.run(None, feeds)
        reply = pb.ModelInferResponse(model_name=request.model_name, model_version="1", id=request.id)
        for meta, value in zip(self.bare.outputs, outputs, strict=True):
            reply.outputs.add(name=meta.name, datatype=meta.datatype, shape=value.shape)
            reply.raw_output_contents.append(value.tobytes())
        return reply.SerializeToString()


class H2InlineProtocol(asyncio.Protocol):
    """One client connection: frames parsed from a buffer, each finished request answered in the same turn."""

    def __init__(self, models: dict[str, InlineModel]) -> None:
        self._models = models
        self._buffer = bytearray()
        self._preface = False
        self._decoder = hpack.Decoder()
        self._streams: dict[int, tuple[str, bytearray]] = {}  # stream -> (path, body)
        self._block: tuple[int, bytearray, bool] | None = None  # a header block awaiting CONTINUATION
        self._transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self._transport = transport
        settings = struct.pack(">HI", 0x4, _BIG_WINDOW) + struct.pack(">HI", 0x3, 1 << 20)
        transport.write(_frame(_SETTINGS, 0, 0, settings)
                        + _frame(_WINDOW_UPDATE, 0, 0, struct.pack(">I", _BIG_WINDOW - 65535)))

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        if not self._preface:
            if len(buffer) < len(_PREFACE):
                return
            del buffer[:len(_PREFACE)]
            self._preface = True
        out: list[bytes] = []
        received = 0
        offset = 0
        while len(buffer) - offset >= 9:
            length = int.from_bytes(buffer[offset:offset + 3], "big")
            if len(buffer) - offset - 9 < length:
                break
            kind, flags = buffer[offset + 3], buffer[offset + 4]
            stream = int.from_bytes(buffer[offset + 5:offset + 9], "big") & 0x7FFFFFFF
            payload = bytes(buffer[offset + 9:offset + 9 + length])
            offset += 9 + length
            if kind == _DATA:
                received += length
                if flags & _PADDED:
                    payload = payload[1:len(payload) - payload[0]]
                state = self._streams.get(stream)
                if state is not None:
                    state[1].extend(payload)
                    if flags & _END_STREAM:
                        out.append(self._answer(stream))
            elif kind in (_HEADERS, _CONTINUATION):
                self._header_block(kind, flags, stream, payload, out)
            elif kind == _SETTINGS and not flags & _ACK:
                out.append(_frame(_SETTINGS, _ACK, 0))
            elif kind == _PING and not flags & _ACK:
                out.append(_frame(_PING, _ACK, 0, payload))
            elif kind == _RST_STREAM:
                self._streams.pop(stream, None)
            elif kind == _GOAWAY:
                self._transport.close()
                return
        del buffer[:offset]
        if received:  # give back what was read, so the client never waits for a window
            out.append(_frame(_WINDOW_UPDATE, 0, 0, struct.pack(">I", received)))
        if out:
            self._transport.write(b"".join(out))

    def _header_block(self, kind: int, flags: int, stream: int, payload: bytes, out: list[bytes]) -> None:
        if kind == _HEADERS:
            if flags & _PADDED:
                payload = payload[1:len(payload) - payload[0]]
            if flags & _PRIORITY:
                payload = payload[5:]
            self._block = (stream, bytearray(payload), bool(flags & _END_STREAM))
        elif self._block is not None:
            self._block[1].extend(payload)
        if not flags & _END_HEADERS or self._block is None:
            return
        stream, block, ended = self._block
        self._block = None
        path = ""
        for name, value in self._decoder.decode(bytes(block), raw=True):
            if name == b":path":
                path = value.decode("latin-1")
        self._streams[stream] = (path, bytearray())
        if ended:
            out.append(self._answer(stream))

    def _answer(self, stream: int) -> bytes:
        path, body = self._streams.pop(stream)
        service, _, method = path.lstrip("/").partition("/")
        try:
            answer = self._call(method, bytes(body[5:])) if service == SERVICE_NAME else None
        except Exception as exc:  # one call's failure, not the connection's
            failed = _headers_block([(":status", "200"), ("content-type", "application/grpc"), ("grpc-status", "13"),
                                     ("grpc-message", quote(f"{type(exc).__name__}: {exc}"))])
            return _frame(_HEADERS, _END_HEADERS | _END_STREAM, stream, failed)
        if answer is None:
            return _frame(_HEADERS, _END_HEADERS | _END_STREAM, stream, _UNIMPLEMENTED)
        message = b"\x00" + struct.pack(">I", len(answer)) + answer
        data = [_frame(_DATA, 0, stream, message[i:i + _DATA_FRAME]) for i in range(0, len(message), _DATA_FRAME)]
        return b"".join((_frame(_HEADERS, _END_HEADERS, stream, _RESPONSE_HEADERS), *data,
                         _frame(_HEADERS, _END_HEADERS | _END_STREAM, stream, _OK_TRAILERS)))

    def _call(self, method: str, message: bytes) -> bytes | None:
        if method == "ModelInfer":
            request = pb.ModelInferRequest.FromString(message)
            return self._models[request.model_name].infer(request)
        if method == "ModelMetadata":
            return self._models[pb.ModelMetadataRequest.FromString(message).name].bare.metadata.SerializeToString()
        if method == "ModelConfig":
            return self._models[pb.ModelConfigRequest.FromString(message).name].bare.config.SerializeToString()
        if method == "ModelStatistics":
            name = pb.ModelStatisticsRequest.FromString(message).name
            return pb.ModelStatisticsResponse(model_stats=[
                pb.ModelStatistics(name=n, version="1") for n in ([name] if name else self._models)
            ]).SerializeToString()
        return _CONSTANT_ANSWERS.get(method)


async def serve(models: dict[str, InlineModel], host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: H2InlineProtocol(models), host, port)
    print(f"h2-inline server on {host}:{port}: {', '.join(models)}", flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    args = server_arguments(__doc__, argv)
    bare = load_models(args.model_repository)
    models = {name: InlineModel(args.model_repository / name / "1" / "model.onnx", model)
              for name, model in bare.items()}
    import uvloop

    uvloop.run(serve(models, args.host, args.port))


if __name__ == "__main__":
    main()
