"""The model pool's former home: its names, now in `speed` (the training path's speed work).

Kept so that `commands`, `demo`, `results.reproduce` and `training.transfer` need no edit while
they are refactored elsewhere; new code imports `rssc_mlflow.training.speed`.
"""

from rssc_mlflow.training.speed import (  # noqa: F401 - re-exported
    DEFAULT_MAX_SOURCES,
    acquire,
    clear,
    enable_for_process,
    enabled,
    feature_extractor,
    is_enabled,
    set_random_seed,
    stats,
)
