"""The agent loop: models (LLM adapters), tools, and the loop that joins them to the log."""
