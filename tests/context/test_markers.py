"""torpor's markers (context/markers.py): every name torpor writes is defined, each kind
round-trips through a log entry, older entries with fewer fields still read, optional
fields stay out of the log while unset. Pure: no database."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from torpor.context import MARKERS, Entry, markers

SRC = Path(__file__).resolve().parents[2] / "src" / "torpor"


def written_marker_names() -> dict[str, list[str]]:
    """Marker names the source writes: literal first arguments of `*.marker(...)` calls
    and `{"marker": ...}` dict literals (-> where)."""
    found: dict[str, list[str]] = {}
    for path in SRC.rglob("*.py"):
        where = str(path.relative_to(SRC))
        for node in ast.walk(ast.parse(path.read_text())):
            name = None
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "marker" and node.args
                    and isinstance(node.args[0], ast.Constant)):  # fmt: skip
                name = node.args[0].value
            elif isinstance(node, ast.Dict):
                for k, v in zip(node.keys, node.values, strict=True):
                    if isinstance(k, ast.Constant) and k.value == "marker" \
                            and isinstance(v, ast.Constant):  # fmt: skip
                        name = v.value
            if isinstance(name, str):
                found.setdefault(name, []).append(where)
    return found


def test_every_marker_name_written_in_src_is_defined():
    written = written_marker_names()
    undefined = {n: w for n, w in written.items() if n not in MARKERS}
    assert not undefined, f"markers written but not defined in context/markers.py: {undefined}"
    # and torpor writes its own markers through their classes, not by name
    assert not written, f"write these through their classes in context/markers.py: {written}"


def test_the_classes_name_every_marker_once():
    names = [cls.NAME for cls in markers.BY_NAME.values()]
    assert len(names) == len(set(names)) == len(MARKERS)
    assert all(n and n == n.lower() for n in names)
    assert {"snapshot_taken", "session_restored", "recovery_note", "state", "fork",
            "size_warning", "summary", "step_limit"} <= MARKERS  # fmt: skip


@pytest.mark.parametrize("cls", list(markers.BY_NAME.values()), ids=lambda c: c.NAME)
def test_each_kind_round_trips_through_an_entry(cls: type[markers.Marker]):
    m = cls()
    e = m.entry()
    assert e.kind == "marker" and e.role == "torpor" and e.content["marker"] == cls.NAME
    assert markers.parse(e) == m and markers.of(e, cls) == m
    assert markers.name_of(e) == cls.NAME
    assert markers.fields_of(e) == m.fields()


def test_optional_fields_are_left_out_until_set_and_missing_ones_read_as_defaults():
    e = markers.State(state="waiting").entry()
    assert e.content == {"marker": "state", "state": "waiting"}
    e = markers.State(state="running", worker="w1", epoch=3).entry()
    assert e.content == {"marker": "state", "state": "running", "worker": "w1", "epoch": 3}
    # a required field is written even when None (a fresh sandbox's recovery note)
    note = markers.RecoveryNote(text="t", snapshot=None, after_seq=0, interrupted=[]).entry()
    assert note.content["snapshot"] is None and "failures" not in note.content
    # an older snapshot marker without machine or mid_turn, and an unknown extra field
    old = markers.parse(Entry.marker("snapshot_taken", snapshot="ck", seq=4, extra=1))
    assert old == markers.SnapshotTaken(snapshot="ck", seq=4)
    assert old.machine is None and old.mid_turn is False  # type: ignore[union-attr]


def test_entries_that_are_not_torpors_markers_parse_to_none():
    assert markers.parse(Entry.message("user", "hi")) is None
    assert markers.parse(Entry.marker("someone_elses", x=1)) is None
    odd = Entry(kind="marker", role="torpor", content="just text")
    assert markers.parse(odd) is None and markers.name_of(odd) == "marker"
    assert markers.fields_of(odd) == {"value": "just text"}
    assert markers.of(Entry.marker("state", state="x"), markers.Fork) is None


def test_what_the_model_sees_of_markers():
    assert markers.model_note(markers.Cancelled(text="stopped").entry()) == "[torpor] stopped"
    assert markers.model_note(markers.RecoveryNote(text="lost").entry()) == "[torpor] lost"
    fork = markers.Fork(parent="ses-a", text="from here").entry()
    assert markers.model_note(fork) == "[torpor] This session is a fork of session ses-a: from here"
    seen = {cls.NAME for cls in markers.BY_NAME.values() if cls.SEEN_BY_MODEL}
    assert seen == {"recovery_note", "cancelled", "fork"}
    for cls in markers.BY_NAME.values():
        if not cls.SEEN_BY_MODEL:
            assert markers.model_note(cls().entry()) is None


def test_marker_classes_are_frozen_dataclasses_with_defaults_for_every_field():
    for cls in markers.BY_NAME.values():
        for f in dataclasses.fields(cls):
            assert f.default is not dataclasses.MISSING \
                or f.default_factory is not dataclasses.MISSING, (cls.NAME, f.name)  # fmt: skip
        with pytest.raises(dataclasses.FrozenInstanceError):
            cls().text = "x"  # type: ignore[attr-defined,misc]
