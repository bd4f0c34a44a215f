"""The paper's protocol in one file: check it against docs/PROTOCOL.md line by line.

Everything that makes two results comparable lives here (and nowhere else), so that the
protocol fingerprint of a run can be computed from a `Profile` and the data it used.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from rssc_mlflow.errors import RsscError

# --- Splits -------------------------------------------------------------------------------
# Fraction of each class used for training, by role. Source: 80/20, target: 20/80.
TRAIN_FRACTION = {"source": 0.8, "target": 0.2}
SEED = 42  # the authors seeded Python, NumPy and TensorFlow with 42

# --- Input size and augmentation ------------------------------------------------------------
PAPER_CROP = 256
PAPER_RESIZE = 292  # resize to 292x292, then crop 256x256 (random for training, central for eval)

# Means subtracted by the authors for ImageNet-lineage models, in RGB order (their code fed RGB
# to the BGR-trained Keras weights). `imagenet-caffe` is Keras's own BGR preprocessing.
IMAGENET_MEANS_RGB = (123.68, 116.779, 103.939)
PREPROCESSING_MODES = ("unit", "imagenet-rgb", "imagenet-caffe")


def resize_for_crop(crop: int) -> int:
    """Side the image is resized to before cropping `crop`: round(crop * 292 / 256), half up."""
    return int(math.floor(crop * PAPER_RESIZE / PAPER_CROP + 0.5))


# --- Optimisation -------------------------------------------------------------------------
PEAK_LR_SCRATCH = 3e-3
PEAK_LR_PRETRAINED = 3e-4
WARMUP_EPOCHS = 5
DECAY_EPOCHS = (50, 70, 90)  # of 100; other epoch counts decay at the same fractions
DECAY_FACTOR = 0.2
PROBE_LR = 1e-3  # the "softmax classifier" on frozen features: fixed rate
# `--schedule-steps`: `paper` counts warm-up and decays in the batches each epoch runs;
# `authors` replays RSSC-transfer's train.py (docs/PROTOCOL.md, "Learning-rate steps").
SCHEDULE_STEPS = ("paper", "authors")
AUTHORS_INITIAL_LR = 1e-5  # train.py's Adam(lr=1e-5): the rate of the very first batch
MULTILABEL_THRESHOLD = 0.5


@dataclasses.dataclass(frozen=True)
class Profile:
    """A named set of defaults. `paper` is exactly the protocol; the others shrink it for CPUs."""

    name: str
    epochs: int
    batch_size: int
    crop: int
    probe_epochs: int
    warmup_epochs: int = WARMUP_EPOCHS
    # Tracing ResNet-50 into a graph costs more on a CPU than a few eager steps.
    run_eagerly: bool = False
    # Evaluate the held-out split after every epoch, as the authors did (reported, never used
    # for selection). Off in `demo`: the final evaluation after the last epoch is the result.
    validate_every_epoch: bool = True
    # Back up weights and optimizer state after every epoch so `--resume` can continue a run
    # (a full weight write per epoch). Off in `demo`, whose runs last seconds.
    checkpoint_every_epoch: bool = True
    # BatchNormalization's moving-average momentum; None keeps Keras's 0.99 (the authors'). Runs
    # of a few hundred steps need a shorter memory: with 0.99 the moving statistics still
    # carry the untrained network's, and evaluation (inference mode) collapses to chance while
    # the same weights with batch statistics classify well (tests/test_science.py).
    bn_momentum: float | None = None
    # Start each residual block's last BatchNorm at gamma 0 (`models.zero_init_residual_gammas`)
    # instead of Keras's 1. Only for networks trained from scratch: loaded weights replace it.
    # With Keras's init a short run spends its first epochs at a loss above chance
    # (docs/PERFORMANCE.md, "Zero-init residuals").
    zero_init_residual: bool = False
    # Multiplies the schedule's peak rates (3e-3 / 3e-4). Adam's rate goes with the square root
    # of the batch, so a profile with a smaller batch than the paper's 100 scales it.
    lr_scale: float = 1.0
    # A quick profile fills cells cheaply (tests, CPU smoke runs): summarize marks its cells and
    # never counts them in a finding.
    quick: bool = False

    @property
    def resize(self) -> int:
        return resize_for_crop(self.crop)

    @property
    def model_options(self) -> dict[str, Any]:
        """The profile's model settings, as `models.build_classifier` and `speed.acquire`
        take them."""
        return {"bn_momentum": self.bn_momentum, "zero_init_residual": self.zero_init_residual}


PROFILES: dict[str, Profile] = {
    "paper": Profile("paper", epochs=100, batch_size=100, crop=256, probe_epochs=100),
    # `rssc demo`: synthetic data on a CPU. 32 px crops and batch 8 (a ResNet-50 step costs
    # about the same at 8 as at 16 images on a CPU, and short runs need steps) with the peak
    # rates scaled to it, few epochs, BatchNorm momentum 0.9 (see `bn_momentum`), residual
    # blocks that start as identities (`zero_init_residual`), the paper's probe (100
    # epochs), no per-epoch validation or backups.
    "demo": Profile("demo", epochs=5, batch_size=8, crop=32, probe_epochs=100,
                    warmup_epochs=1, bn_momentum=0.9, lr_scale=math.sqrt(8 / 100),
                    zero_init_residual=True,
                    validate_every_epoch=False, checkpoint_every_epoch=False),
    # The smallest run that still goes through every code path (tests).
    "smoke": Profile("smoke", epochs=1, batch_size=8, crop=32, probe_epochs=2, warmup_epochs=1,
                     run_eagerly=True, quick=True),
}
DEFAULT_PROFILE = "paper"


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise RsscError(
            f"Unknown profile {name!r}. Choose one of: {', '.join(PROFILES)}."
        ) from None


# --- Published numbers ------------------------------------------------------------------------
# Table II: 80% source training, evaluated on the 20% (accuracy %, or F1 % for multi-label).
TABLE2 = {
    "mlrsnet_ml": {"scratch": 91.83, "imagenet": 92.41},
    "mlrsnet_sl": {"scratch": 97.74, "imagenet": 98.61},
    "resisc45": {"scratch": 95.11, "imagenet": 97.03},
    "patternnet": {"scratch": 99.47, "imagenet": 99.84},
    "rsicb256": {"scratch": 99.39, "imagenet": 99.58},
    "aid": {"scratch": 93.90, "imagenet": 97.30},
}
# Table III (probe on UCM) and Table IV (fine-tuning on UCM) from the MLRSNet subsets.
TABLE3 = {"mlrsnet_ucm_same": 91.79, "mlrsnet_ucm_other": 89.46, "mlrsnet_half": 92.26}
TABLE4 = {"mlrsnet_ucm_same": 92.38, "mlrsnet_ucm_other": 89.88, "mlrsnet_half": 92.38}

# The one warning on every output made from synthetic images (console, tables, figures, demo):
# such numbers measure the code, not the paper's question.
SYNTHETIC_BANNER = ("SYNTHETIC DATA: these numbers come from synthetic stand-in images and are "
                    "NOT comparable to the paper.")
