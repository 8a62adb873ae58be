"""One test frame through a gateway's WebSocket, run where the gateway runs: deploy/images/ota.sh
pipes it into `docker exec -i <container> python -` with FRAME (the image, base64) defined in
front, so a device needs nothing beyond the image itself.

Prints the result line and exits 0 when the frame was answered with a result carrying at least
MIN_DETECTIONS detections, 1 otherwise. The first of EDGE_AUTH_TOKENS (the container's own
environment) authenticates it when authentication is on.
"""

import asyncio
import base64
import json
import os
import sys

import aiohttp

FRAME: str = globals().get("FRAME", "")  # defined by ota.sh in front of this file
MIN_DETECTIONS = int(os.environ.get("SMOKE_MIN_DETECTIONS", "1"))


async def main() -> int:
    url = f"ws://127.0.0.1:{os.environ.get('EDGE_PORT', '8080')}/v1/stream"
    token = os.environ.get("EDGE_AUTH_TOKENS", "").split(",")[0].strip()
    protocols = ("edge.v1", "bearer." + token) if token else ("edge.v1",)
    async with aiohttp.ClientSession() as http, http.ws_connect(url, protocols=protocols) as ws:
        hello = await ws.receive_json(timeout=60)
        if hello.get("type") != "hello":
            print(json.dumps(hello))
            return 1
        await ws.send_bytes(base64.b64decode(FRAME))
        while True:
            reply = await ws.receive_json(timeout=120)
            if reply.get("seq") == 0:
                break
    print(json.dumps(reply))
    ok = reply.get("type") == "result" and len(reply.get("detections", [])) >= MIN_DETECTIONS
    return 0 if ok else 1


sys.exit(asyncio.run(main()))
