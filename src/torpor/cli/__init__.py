"""Command-line front door: the `torpor` command."""
