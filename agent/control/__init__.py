"""The control plane: commands over MQTT (agent.control.stage), live configuration (live, persist),
model updates (model_update) and audited snapshots (snapshot). See docs/control.md."""
