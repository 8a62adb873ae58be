"""Transports: thin adapters from a wire protocol to `Frame`s in and replies out."""
