"""How a run is named on the console, without MLflow: the plan (`results.reproduce`) labels its
runs with it and must not import the tracking layer, which `tracking.runs` is."""

from __future__ import annotations


def run_name(stage: str, source: str, target: str = "") -> str:
    """The label of a run on the console: 'finetune mlrsnet_sl -> ucm', 'pretrain resisc45'."""
    return f"{stage} {source} -> {target}" if target else f"{stage} {source}"
