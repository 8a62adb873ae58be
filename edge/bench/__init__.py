"""`edge bench`: the gateway measured against what this machine can do, as a report.

One module a stage: `options` (the command line), `frames` (the picture every client sends),
`baselines` (the machine's ceiling: plain loops, one per core, and raw sessions), `servers`
(the gateway and the naive in-order server, `naive`, as subprocesses; their CPU time and
metrics), `links` (one small client per transport behind one interface: WebSocket there,
`rtclink` and `grpclink`), `load` (streams offering frames at a pace, the replies they get),
`scenarios` (the standard runs), `results`, `stats`, `report` and `charts` (Markdown and
PNGs), `run` (the order of it all).
"""
