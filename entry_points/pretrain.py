"""MLproject entry point `pretrain`: the same parameters as `rssc pretrain`."""

import sys

from rssc_mlflow.cli import run_entry_point

if __name__ == "__main__":
    run_entry_point("pretrain", sys.argv[1:])
