"""edge-gateway: a real-time inference gateway for live video at the edge."""

__version__ = "0.1.0"
