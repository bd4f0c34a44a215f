"""MLproject entry point `finetune`: the same parameters as `rssc finetune`."""

import sys

from rssc_mlflow.cli import run_entry_point

if __name__ == "__main__":
    run_entry_point("finetune", sys.argv[1:])
