"""The local status page: live preview, latest events, link/spool/modem/GNSS state, /status.json and
/metrics (agent.web.stage builds it; agent.web.server serves it)."""
