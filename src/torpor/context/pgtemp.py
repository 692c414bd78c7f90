"""Moved to `torpor.db.pgtemp` (the database layer); kept so that `torpor.context.pgtemp`
still imports."""

from torpor.db.pgtemp import TempCluster, free_port, server_bindir

__all__ = ["TempCluster", "free_port", "server_bindir"]
