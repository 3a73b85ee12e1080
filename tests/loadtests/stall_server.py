"""A test server for the harness: a grpc.aio generic handler for ModelInfer (and ModelMetadata) that
answers at once, except that it stalls its whole event loop for --stall-ms, once per model name, on
that model's N-th request (a GC pause or a blocked loop, as a real server might have). N is
--stall-at, or the number after '@' in the model name ("closed-loop@150").

    python tests/loadtests/stall_server.py --stall-at 400 --stall-ms 500    (prints "PORT <n>")
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import Counter
from typing import Any

import grpc

from server._generated import grpc_service_pb2 as pb

SERVICE = "inference.GRPCInferenceService"


def handler(stall_at: int, stall_s: float) -> grpc.GenericRpcHandler:
    seen: Counter[str] = Counter()
    reply = pb.ModelInferResponse(model_name="m", model_version="1")
    reply.outputs.add(name="y", datatype="FP32", shape=[1, 1])
    reply.raw_output_contents.append(bytes(4))
    answer = reply.SerializeToString()
    metadata = pb.ModelMetadataResponse(
        name="m", versions=["1"], platform="test",
        inputs=[pb.ModelMetadataResponse.TensorMetadata(name="x", datatype="FP32", shape=[-1, 4])],
        outputs=[pb.ModelMetadataResponse.TensorMetadata(name="y", datatype="FP32", shape=[-1, 1])])

    async def infer(request: pb.ModelInferRequest, context: Any) -> bytes:
        name = request.model_name
        seen[name] += 1
        if seen[name] == (int(name.rpartition("@")[2]) if "@" in name else stall_at):
            time.sleep(stall_s)  # blocks the event loop: every request in flight waits
        return answer

    async def model_metadata(request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        return metadata

    return grpc.method_handlers_generic_handler(SERVICE, {
        "ModelInfer": grpc.unary_unary_rpc_method_handler(infer, request_deserializer=pb.ModelInferRequest.FromString),
        "ModelMetadata": grpc.unary_unary_rpc_method_handler(
            model_metadata, request_deserializer=pb.ModelMetadataRequest.FromString,
            response_serializer=pb.ModelMetadataResponse.SerializeToString),
    })


async def serve(stall_at: int, stall_s: float, lifetime_s: float) -> None:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler(stall_at, stall_s),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"PORT {port}", flush=True)
    await server.wait_for_termination(timeout=lifetime_s)  # never outlives a test run
    await server.stop(None)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stall-at", type=int, default=400)
    parser.add_argument("--stall-ms", type=float, default=500.0)
    parser.add_argument("--lifetime-s", type=float, default=60.0)
    args = parser.parse_args()
    asyncio.run(serve(args.stall_at, args.stall_ms / 1000.0, args.lifetime_s))


if __name__ == "__main__":
    main()
