"""Which version answers a stream: the repository on disk, versions, hot reload, shadow runs,
canary rollout, pulling model files."""
