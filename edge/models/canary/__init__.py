"""Canary rollout: a new version tried on a share of streams, judged, promoted or rolled back, the
same in every process."""
