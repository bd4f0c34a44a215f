"""MLproject entry point `summarize`: the same parameters as `rssc summarize`."""

import sys

from rssc_mlflow.cli import run_entry_point

if __name__ == "__main__":
    run_entry_point("summarize", sys.argv[1:])
