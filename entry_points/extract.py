"""MLproject entry point `extract`: the same parameters as `rssc extract`."""

import sys

from rssc_mlflow.cli import run_entry_point

if __name__ == "__main__":
    run_entry_point("extract", sys.argv[1:])
