"""mfql clients: talk to an mfql server (REST, Open Inference Protocol v2, WebSocket)."""
