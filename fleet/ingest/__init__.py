"""The ingest: a persistent MQTT session (`mqtt`) feeding a writer that commits before it acknowledges
(`service`)."""
