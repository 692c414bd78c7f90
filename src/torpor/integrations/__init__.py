"""torpor inside the agent frameworks: one object each, each an optional extra.

- `torpor.integrations.langgraph` (`pip install 'torpor[langgraph]'`): `TorporSaver`, a
  LangGraph checkpointer on torpor's database that stores what each step appended, not
  the whole state again; `SandboxTools`, a graph's tools run in a torpor sandbox that is
  checkpointed when the graph interrupts and restored when it resumes.

torpor's core never imports this package (tests/test_architecture.py), so it installs and
runs without any framework; a framework is imported only by its own module here.
"""
