"""KServe v2, the Open Inference Protocol: its core, apart from any transport.

- `errors`: the protocol's error, one kind each for HTTP statuses and gRPC codes;
- `tensors`: typed tensors from JSON values or raw little-endian bytes, checked, and back;
- `rest`: the REST body (JSON, and the binary tensor data extension) to a request and back;
- `metadata`: server and model metadata from the model repository;
- `infer`: the two ways in, the pipeline (`NAME`: an encoded image in, typed detections out)
  and the raw network (`NAME.raw`: the ONNX model's own tensors), both through the scheduler.

The transports (edge/transports/kserve_rest.py, and the gRPC servicer) only move these
between the wire and `infer` (docs/protocols.md).
"""
