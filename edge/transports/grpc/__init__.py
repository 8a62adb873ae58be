"""The gRPC side of the gateway: its server (edge.transports.grpc.server), the services it serves
and the
modules generated from proto/ (edge.transports.grpc.gen)."""
