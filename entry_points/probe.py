"""MLproject entry point `probe`: the same parameters as `rssc probe`."""

import sys

from rssc_mlflow.cli import run_entry_point

if __name__ == "__main__":
    run_entry_point("probe", sys.argv[1:])
