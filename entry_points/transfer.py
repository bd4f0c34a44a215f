"""MLproject entry point `transfer`: the same parameters as `rssc transfer TARGET`."""

import sys

from rssc_mlflow.cli import run_entry_point

if __name__ == "__main__":
    run_entry_point("transfer", sys.argv[1:], positional=1)
