"""The control plane: commands over MQTT (agent.control.stage), the one gate every command passes
(gate: signatures and roles in auth, freshness and replays in replay), live configuration (live,
persist, tunable), model updates (model_update, fetch) and audited snapshots (snapshot). See
docs/control.md."""
