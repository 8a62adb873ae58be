"""The frame path, whatever the wire: streams, admission, the session template, the scheduler, the
pipeline, the outbox."""
