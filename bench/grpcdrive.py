"""The stream benchmark's gRPC client: N PredictStream calls, each on a connection of its own,
paced like bench/stream.py's WebSocket streams, counted the same way (docs/protocols.md)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc

from edge.bench.grpclink import OWN_CONNECTION
from edge.transports.grpc.gen import inference_pb2 as pb

METHOD = "/inference.InferenceService/PredictStream"


async def drive_grpc(
    target: str, model: str, data: bytes, streams: int, fps: float, seconds: float
) -> dict[str, Any]:
    """bench/stream.py's `drive`, over gRPC: the same counts, ages and per-stream shares."""
    ages: list[tuple[float, float]] = []
    per_stream = [0] * streams
    counts = {"result": 0, "dropped": 0, "error": 0, "sent": 0, "unanswered": 0, "twice": 0}
    kinds = {pb.InferenceResponse.RESULT: "result", pb.InferenceResponse.DROPPED: "dropped",
             pb.InferenceResponse.ERROR: "error"}  # fmt: skip

    async def one(k: int) -> None:
        async with grpc.aio.insecure_channel(target, options=OWN_CONNECTION) as channel:
            call = channel.stream_stream(
                METHOD,
                request_serializer=pb.InferenceRequest.SerializeToString,
                response_deserializer=pb.InferenceResponse.FromString,
            )()
            sent: dict[int, float] = {}
            answered: set[int] = set()

            async def reader() -> None:
                while (r := await call.read()) is not grpc.aio.EOF:
                    now = time.monotonic()
                    counts["twice"] += r.seq in answered
                    answered.add(r.seq)
                    counts[kinds[r.status]] += 1
                    if r.status == pb.InferenceResponse.RESULT:
                        per_stream[k] += 1
                        ages.append((now, now - sent[r.seq]))

            rt = asyncio.create_task(reader())
            request = pb.InferenceRequest(payload=data, model_id=model)
            period = 1.0 / fps
            start = time.monotonic() + k * period / streams
            seq = 0
            while time.monotonic() - start <= seconds:
                due = start + seq * period
                if due > time.monotonic():
                    await asyncio.sleep(due - time.monotonic())
                sent[seq] = time.monotonic()
                await call.write(request)
                seq += 1
            counts["sent"] += seq
            await call.done_writing()  # every frame sent is answered, then the call ends OK
            try:
                await asyncio.wait_for(rt, 30.0)
            except (asyncio.TimeoutError, grpc.aio.AioRpcError):
                pass
            counts["unanswered"] += seq - len(answered & set(range(seq)))

    t0 = time.monotonic()
    await asyncio.gather(*(one(k) for k in range(streams)))
    elapsed = time.monotonic() - t0
    return {"ages": ages, "counts": counts, "elapsed": min(elapsed, seconds),
            "per_stream": per_stream}  # fmt: skip
