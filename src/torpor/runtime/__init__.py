"""The runtime: where the context log, the sandbox engine and the snapshot store meet."""
