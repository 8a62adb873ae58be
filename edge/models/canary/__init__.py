"""Canary rollout: a new version tried on a share of streams, judged, promoted or rolled back, the
same in every process. `canaries.Canaries` is the one entry point (the repository and the
pipeline call it); trial.py the figures and the verdict, rollout.py the transitions, board.py
the decisions the processes share."""
