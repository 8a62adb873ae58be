"""Modules generated from proto/*.proto by `python -m edge.transports.grpc.codegen`; do not edit
them.

They register their types in `POOL`, a descriptor pool of the gateway's own, not in protobuf's
default pool: a client library loaded in the same process (a test's stubs built from the
original contract, tritonclient) registers the same names (`inference.InferenceRequest`,
`inference.ModelInferRequest`) from its own copies of the protos, and one pool cannot hold
a name twice. Server reflection answers from this pool (edge.transports.grpc.server).
"""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
