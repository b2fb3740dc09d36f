"""The HTTP API: app factory, one module per resource, auth, and the single error renderer."""
