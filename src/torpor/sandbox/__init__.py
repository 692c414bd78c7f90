"""Sandbox engines: isolated sandboxes that can be checkpointed and restored whole."""
