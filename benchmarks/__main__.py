"""`python -m benchmarks`: every comparison in one run, on synthetic data, as one table.

    python -m benchmarks                          # the default sizes: ~20 min on a 2-core CPU
    python -m benchmarks --smoke                  # tiny sizes, a one-conv net: tests the suite
    python -m benchmarks --only pipeline,prepare --prepare-images 30000 --out docs/perf

Each comparison runs its measurements in child processes, one comparison after the other.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

from benchmarks import (
    SUITE_KEY,
    Options,
    Row,
    child,
    extraction,
    fmt,
    memory,
    pipeline,
    prepare,
    probe,
    summarize,
    tracking,
    training,
)

MODULES = {m.NAME: m for m in (pipeline, training, extraction, probe, tracking, prepare, memory,
                              summarize)}
NEEDS_SUITE_DATA = {"training", "extraction", "probe", "tracking"}
SMOKE_BANNER = ("SMOKE RUN (--smoke): tiny sizes, a one-conv network in place of ResNet-50, all "
                "in one process; these figures test the suite and measure nothing.")
COLUMNS = ("comparison", "ours", "baseline", "ratio", "target", "met?", "raw figures")


# option: (default, smoke-run default, help). Defaults: ~20 min on a 2-core CPU.
SIZES: dict[str, tuple[int, int, str]] = {
    "images": (1000, 16, "images per input-pipeline source"),
    "crop": (256, 32, "input-pipeline crop; sources are this size, the AID-like 600/256 of it"),
    "epochs": (2, 1, "timed epochs after the first (tracing, cache filling)"),
    "train_crop": (128, 32, "crop of the ResNet-50 comparisons (256 on a GPU)"),
    "train_images": (64, 16, "images per epoch of training, tracking"),
    "batch": (32, 8, "batch size of everything but the probe (100, as the authors')"),
    "extract_images": (450, 16, "images of feature extraction and of the probe's real features"),
    "probe_rows": (20_000, 450, "training rows of the linear probe"),
    "probe_epochs": (100, 3, "epochs of the faithful Adam probe (the authors': 100)"),
    "prepare_images": (2000, 90, "the larger prepare tree (the issue's size: 30,000)"),
    "memory_images": (4000, 16, "images of the memory comparison (decoded: 1 GB at crop 256)"),
    "runs": (1000, 20, "runs in the summarize store"),
}


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, (default, smoke, help_) in SIZES.items():
        p.add_argument(f"--{name.replace('_', '-')}", type=int,
                       help=f"{help_} (default {default:,}; --smoke: {smoke:,})")
    p.add_argument("--only", default="",
                   help=f"comma-separated comparisons to run, of: {', '.join(MODULES)}")
    p.add_argument("--out", type=Path, help="write results.json and results.md here")
    p.add_argument("--work", type=Path, help="work folder (kept); default: a temporary one")
    p.add_argument("--smoke", action="store_true",
                   help="tiny sizes, a one-conv network for ResNet-50, every measurement in "
                        "this process: tests the suite in about a minute, measures nothing")
    args = p.parse_args(argv)
    for name, (default, smoke, _) in SIZES.items():
        if getattr(args, name) is None:
            setattr(args, name, smoke if args.smoke else default)
    unknown = set(filter(None, args.only.split(","))) - set(MODULES)
    if unknown:
        p.error(f"unknown comparison(s) {', '.join(sorted(unknown))}; "
                f"choose from {', '.join(MODULES)}")
    return args


def machine() -> str:
    cpu = "unknown CPU"
    with open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f
                    if line.startswith("model name")), cpu)
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    gpu = shutil.which("nvidia-smi") and os.popen(
        "nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null").read().strip()
    return (f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB, GPU: {gpu or 'none'}; "
            f"load average {os.getloadavg()[0]:.2f} at start; Python {platform.python_version()}")


def table(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        met = "n/a" if r.met is None else ("yes" if r.met else "NO")
        lines.append(f"| {r.comparison} | {fmt(r.ours)} {r.unit} | {fmt(r.baseline)} {r.unit} | "
                     f"{fmt(r.ratio)} | {r.target} | {met} | {r.raw} |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    args = parse(argv)
    names = [n for n in MODULES if not args.only or n in args.only.split(",")]
    work = args.work or Path(tempfile.mkdtemp(prefix="rssc-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    opts = Options(work=work.resolve(), smoke=args.smoke,
                   **{name: getattr(args, name) for name in SIZES})
    started = time.perf_counter()
    host = machine()
    print(f"[bench] {', '.join(names)}; work folder {opts.work}", flush=True)

    keys = set(pipeline.KEYS if "pipeline" in names else ())
    if NEEDS_SUITE_DATA & set(names):
        keys.add(SUITE_KEY)
    if keys:
        sizes = {k: args.images for k in keys}
        if SUITE_KEY in keys:
            sizes[SUITE_KEY] = max(args.images, args.train_images, args.extract_images)
        print(f"[bench] writing and preparing synthetic {', '.join(sorted(keys))}", flush=True)
        child(opts, "pipeline", "setup", keys=sorted(keys), images=sizes, crop=args.crop,
              work=str(opts.work))

    def one(name: str) -> list[Row]:
        t0 = time.perf_counter()
        try:
            rows = MODULES[name].run(opts)
        except Exception:  # noqa: BLE001 - one failed comparison must not hide the others
            print(f"[bench] {name} FAILED:\n{traceback.format_exc()}", file=sys.stderr)
            nan = float("nan")
            rows = [Row(name, nan, nan, "", nan, "", False, "FAILED: see the log above")]
        print(f"[bench] {name}: {time.perf_counter() - t0:.0f} s", flush=True)
        return rows

    rows = [r for name in names for r in one(name)]

    elapsed = time.perf_counter() - started
    text = table(rows)
    if args.smoke:
        text = SMOKE_BANNER + "\n\n" + text
    print("\n" + text + f"\n\n[bench] {elapsed / 60:.1f} min; {host}", flush=True)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        command = "python -m benchmarks " + " ".join(argv)
        header = (f"Measured {datetime.date.today()} by `{command.strip()}` in "
                  f"{elapsed / 60:.1f} min on: {host}.\n\n")
        (args.out / "results.md").write_text(header + text + "\n")
        (args.out / "results.json").write_text(json.dumps(
            {"command": command, "minutes": elapsed / 60, "machine": host,
             "options": {k: str(v) for k, v in dataclasses.asdict(opts).items()},
             "rows": [dataclasses.asdict(r) for r in rows]}, indent=1))
        print(f"[bench] wrote {args.out / 'results.md'} and results.json")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if all(r.ratio == r.ratio for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
