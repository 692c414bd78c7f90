"""Every SQL statement torpor runs, as named functions grouped by table family: `log`
(the context log), `runtime` (sessions, inbox, heartbeats, snapshots, copies), `tokens`
(API tokens and per-tenant counts), `sandboxes` (the sandbox resource and its
snapshots), `metrics` (scrape-time reads), `langgraph` (the LangGraph checkpointer of
`torpor.integrations.langgraph`). Each takes a `Tx` (`Database.write()` or `.read()`)
and writes `%s` placeholders; the caller chooses the transaction, so several statements
can share one."""
