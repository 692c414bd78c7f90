"""torpor: durable AI-agent sessions (context log + whole-sandbox snapshot/restore)."""

__version__ = "0.1.0"
