"""The gRPC transport's client for the bench: one `PredictStream` call per stream of the
gateway's InferenceService (proto/inference.proto); each request is a frame, each response
answers one frame by its seq (or, a drop notice, several: the client asks for them merged,
`merge_dropped`), read into the WebSocket's JSON terms."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import grpc

from edge.bench.link import EndOfStream, Link
from edge.transports.grpc.gen import inference_pb2 as pb
from edge.transports.grpc.gen.inference_pb2_grpc import InferenceServiceStub

KINDS = {pb.InferenceResponse.RESULT: "result", pb.InferenceResponse.DROPPED: "dropped",
         pb.InferenceResponse.ERROR: "error"}  # fmt: skip
#: how long the channel may take to connect
CONNECT_WITHIN_S = 30.0
#: each stream a connection of its own, as each camera has (and each WebSocket is): gRPC
#: otherwise shares one connection between the channels a process opens to one target, and
#: every stream would land on the one serving process that accepted it
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


class GrpcLink(Link):
    def __init__(self, channel: grpc.aio.Channel, model: str) -> None:
        super().__init__()
        self.channel = channel
        self.call: Any = InferenceServiceStub(channel).PredictStream()
        self.model = model

    @classmethod
    async def open(cls, _http: aiohttp.ClientSession, url: str, model: str) -> Link:
        """`url` is grpc://host:port."""
        channel = grpc.aio.insecure_channel(url.removeprefix("grpc://"), options=OWN_CONNECTION)
        try:
            await asyncio.wait_for(channel.channel_ready(), CONNECT_WITHIN_S)
        except BaseException:
            await channel.close()
            raise
        return cls(channel, model)

    async def send(self, frame: bytes) -> None:
        # the first request names the model; the later ones leave it as it is
        model, self.model = self.model, ""
        request = pb.InferenceRequest(payload=frame, model_id=model)
        if not self.sent_at:  # the first request asks for merged drop notices too
            request.merge_dropped = True
        self.sent_at.append(time.monotonic())
        await self.call.write(request)

    async def recv(self) -> dict[str, Any]:
        try:
            response = await self.call.read()
        except grpc.aio.AioRpcError:
            raise EndOfStream from None
        if response is grpc.aio.EOF:
            raise EndOfStream
        reply = {"type": KINDS[response.status], "seq": response.seq}
        if response.seqs:  # a run of drops merged into one response
            reply["seqs"] = list(response.seqs)
        return reply

    async def close(self) -> None:
        self.call.cancel()
        await self.channel.close()
