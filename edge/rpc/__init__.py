"""The gRPC side of the gateway: its server (edge.rpc.server), the services it serves and the
modules generated from proto/ (edge.rpc.gen)."""
