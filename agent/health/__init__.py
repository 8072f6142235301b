"""Node health: camera health (lost, stalled, frozen), system figures, the status report and telemetry.

`agent.health.stage` is the stage builder; `running.services.health` gives the control plane and the
status page the frame tap (`.tap`), the status collector (`.collector`) and privacy access (`.privacy`).
"""
