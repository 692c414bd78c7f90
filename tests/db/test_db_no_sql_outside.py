"""No SQL outside the database layer: every string constant of every module of
src/torpor outside torpor/db/ is read (docstrings and f-string parts too) and none may
hold a SQL statement. Pure: reads the source."""

from __future__ import annotations

import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "torpor"
DB = SRC / "db"

# statements, not prose: "a conditional UPDATE" passes, "UPDATE t SET" does not
SQL = re.compile("|".join((
    r"\bSELECT\s+(?:\d|\S.*?\bFROM\s)",
    r"\bINSERT\s+(?:OR\s+\w+\s+)?INTO\s",
    r"\bUPDATE\s+\w+\s+SET\s",
    r"\bDELETE\s+FROM\s",
    r"\b(?:CREATE|DROP|ALTER)\s+(?:UNIQUE\s+)?(?:TABLE|INDEX|DATABASE|VIEW|SCHEMA)\b",
    r"\bPRAGMA\s+\w+",
    r"\bBEGIN\s+(?:IMMEDIATE|EXCLUSIVE|DEFERRED|ISOLATION)\b",
)), re.DOTALL)


def strings(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, text) of each string constant; an f-string with `{}` for what it formats."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            out.append((node.lineno, node.value))
        elif isinstance(node, ast.JoinedStr):
            out.append((node.lineno, "".join(
                v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)))
    return out


def sql_in(path: Path) -> list[str]:
    return [f"{path}:{line}: {m.group(0)[:60]!r}"
            for line, text in strings(ast.parse(path.read_text()))
            if (m := SQL.search(text))]


def test_no_module_outside_torpor_db_holds_sql():
    hits = [h for p in sorted(SRC.rglob("*.py")) if DB not in p.parents for h in sql_in(p)]
    assert not hits, "SQL outside torpor/db/ (move it to torpor.db.queries):\n" + "\n".join(hits)


def test_the_check_sees_sql(tmp_path: Path):
    # a check that matches nothing would pass: it does see the statements of torpor/db ...
    inside = [h for p in sorted(DB.rglob("*.py")) for h in sql_in(p)]
    assert len(inside) > 40
    # ... and each kind of statement, in a plain string, an f-string and a docstring
    probe = tmp_path / "probe.py"
    probe.write_text('"""Run PRAGMA journal_mode first."""\n'
                     'a = f"SELECT {cols} FROM t WHERE id = %s"\n'
                     'b = "INSERT INTO t (a) VALUES (%s)"\n'
                     'c = "UPDATE t SET a = 1"\nd = "DELETE FROM t"\n'
                     'e = "CREATE UNIQUE INDEX i ON t (a)"\nf = "SELECT 1"\n'
                     'g = "prose: one conditional UPDATE, a SELECT of the row"\n')
    hits = sql_in(probe)
    assert [h.split(":")[1] for h in hits] == ["1", "2", "3", "4", "5", "6", "7"], hits
