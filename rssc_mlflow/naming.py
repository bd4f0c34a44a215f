"""How runs and lists of names are written on the console, without MLflow: the plan
(`results.reproduce`) labels its runs with it and must not import the tracking layer, which
`tracking.runs` is."""

from __future__ import annotations

from collections.abc import Callable, Iterable


def run_name(stage: str, source: str, target: str = "") -> str:
    """The label of a run on the console: 'finetune mlrsnet_sl -> ucm', 'pretrain resisc45'."""
    return f"{stage} {source} -> {target}" if target else f"{stage} {source}"


def few(names: Iterable[str], limit: int = 10, show: Callable[[str], str] = repr) -> str:
    """The first `limit` names, then how many more: "'a', 'b' and 3 more" (messages stay short
    whatever the count, and still say it)."""
    names = list(names)
    shown = ", ".join(show(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
