"""What the docs tests share: the `torpor.*` names a page mentions, and resolving one
(the longest importable module, then attributes), so that a page names only what exists."""

from __future__ import annotations

import importlib
import re


def torpor_names(text: str) -> set[str]:
    """Every dotted `torpor.x.y` name in the text."""
    return set(re.findall(r"\btorpor(?:\.\w+)+", text))


def resolve(dotted: str) -> object:
    """The object a dotted name stands for; ModuleNotFoundError or AttributeError if none."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(dotted)
