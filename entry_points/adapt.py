"""MLproject entry point `adapt`: the same parameters as `rssc adapt`."""

import sys

from rssc_mlflow.cli import run_entry_point

if __name__ == "__main__":
    run_entry_point("adapt", sys.argv[1:])
