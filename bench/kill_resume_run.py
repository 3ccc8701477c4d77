"""Kill `dermsynth run` at random moments, rerun it, and check the final outputs equal an uninterrupted run.

    python bench/kill_resume_run.py [--trials 5] [--config CONFIG] [--work DIR]

The reference run and every trial use the same study (default: the tiny end-to-end study of
tests/test_pipeline.py). Each trial is killed with SIGKILL (no clean-up handlers run) at a uniformly random
moment of the reference run's duration, then rerun to completion. Outputs are compared file by file: images
and tables byte for byte, except fields that record wall time (seconds, timestamps), which are dropped first.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

VOLATILE_KEYS = {"seconds", "created_utc", "finished_utc", "started_utc", "updated_utc", "seconds_this_run",
                 "seconds_this_call",
                 "elapsed", "wall_seconds", "images_per_second", "train_images_per_second", "seconds_per_epoch",
                 # cache keys that include the run folder's own paths or file times
                 "settings_hash", "fingerprints"}
SKIPPED = {".stage.json", "versions.json", "train_log.csv"}  # wall-time logs, not results
SKIPPED_DIRS = {"checkpoints", "cache", "logs"}


# --smoke: two stages only, one trial: checks that the script runs.
SMOKE_STUDY = """
name: kill-resume smoke
prepare: {dataset: sample, max_images: 40, preprocess: {image_size: 32}}
train:
  settings:
    max_steps: 6
    max_minutes: null
    model: {image_size: 16, block_out_channels: [16, 32], attention_levels: [], attention_head_dim: 16,
            norm_num_groups: 8}
    sample_every: 6
    checkpoint_every: 3
    samples_per_class: 1
"""


def run(config: Path, out: Path, kill_after: float | None = None) -> float:
    started = time.time()
    process = subprocess.Popen([sys.executable, "-m", "dermsynth", "run", str(config), "--out", str(out)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        process.wait(timeout=kill_after)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the whole group: worker processes die too
        process.wait()
        return -1.0
    if process.returncode != 0:
        raise SystemExit(f"dermsynth run failed ({process.returncode}) for {out}")
    return time.time() - started


def _progress_at_kill(out: Path) -> str:
    """Which stages had finished, and the training's newest checkpoint, when the run died."""
    done = sorted(p.parent.name for p in out.glob("*/.stage.json"))
    steps = sorted(int(p.name.split("-")[1]) for p in out.glob("model/checkpoints/step-*"))
    training = f"newest checkpoint step {steps[-1]}" if steps else "no checkpoint yet"
    return f"finished: {', '.join(done) or 'none'}; {training}"


def _clean_json(value):
    if isinstance(value, dict):
        return {k: _clean_json(v) for k, v in value.items() if k not in VOLATILE_KEYS}
    if isinstance(value, list):
        return [_clean_json(v) for v in value]
    return value


def fingerprint(path: Path, root: Path) -> str:
    data = path.read_bytes()
    if path.suffix == ".png":  # pixels, plus provenance text without its timestamp
        from PIL import Image

        with Image.open(path) as image:
            text = {k: v.replace(str(root), "<RUN>") for k, v in sorted(image.text.items()) if k not in VOLATILE_KEYS}
            return hashlib.sha256(image.tobytes() + json.dumps(text).encode()).hexdigest()
    elif path.suffix == ".md":  # the summary names when it was written
        data = b"\n".join(line for line in data.splitlines() if b"summarised" not in line)
    elif path.suffix == ".json":
        data = json.dumps(_clean_json(json.loads(data)), sort_keys=True).encode()
    elif path.suffix == ".csv":
        import pandas as pd

        frame = pd.read_csv(path)
        frame = frame.drop(columns=[c for c in frame.columns if c in VOLATILE_KEYS])
        data = frame.to_csv(index=False).encode()
    text = data.decode(errors="ignore") if path.suffix in (".json", ".csv", ".yaml", ".md") else None
    if text is not None:  # run folders differ by name: compare paths relative to each run
        data = text.replace(str(root), "<RUN>").encode()
    return hashlib.sha256(data).hexdigest()


def tree(root: Path) -> dict[str, str]:
    files = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if path.is_file() and path.name not in SKIPPED and not SKIPPED_DIRS & set(relative.parts) \
                and path.suffix not in (".html",):
            files[str(relative)] = fingerprint(path, root)
    return files


def compare(expected: dict[str, str], out: Path) -> list[str]:
    got = tree(out)
    return sorted(set(expected) ^ set(got)) + sorted(k for k in set(expected) & set(got) if expected[k] != got[k])


def compare_existing(work: Path) -> int:
    expected = tree(work / "reference")
    trials = sorted(work.glob("trial-*"))
    bad = [(t.name, compare(expected, t)) for t in trials]
    for name, problems in bad:
        print(f"{name}: {'identical' if not problems else 'DIFFERENT: ' + ', '.join(problems[:5])}")
    failures = sum(1 for _, problems in bad if problems)
    print(f"{len(trials) - failures}/{len(trials)} trials identical to the uninterrupted run")
    return 1 if failures else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--config", type=Path, default=None)
    parser.add_argument("--work", type=Path, default=Path("/tmp/dermsynth-kill-resume"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compare-only", action="store_true", help="compare the trial folders already in --work")
    parser.add_argument("--smoke", action="store_true", help="one trial of a two-stage study: checks that it runs")
    args = parser.parse_args()
    if args.smoke:
        import tempfile

        args.trials, args.work = 1, Path(tempfile.mkdtemp(prefix="kill-resume-"))
        args.config = args.work / "smoke.yaml"
        args.config.write_text(SMOKE_STUDY)
    if args.compare_only:
        return compare_existing(args.work)
    args.work.mkdir(parents=True, exist_ok=True)
    config = args.config
    if config is None:
        from dermsynth.testing.studies import TINY_STUDY

        config = args.work / "study.yaml"
        config.write_text(TINY_STUDY)
    reference = args.work / "reference"
    seconds = run(config, reference)
    expected = tree(reference)
    print(f"reference run: {seconds:.0f} s, {len(expected)} output files")
    rng = random.Random(args.seed)
    failures = 0
    for trial in range(args.trials):
        out = args.work / f"trial-{trial}"
        moment = rng.uniform(0.05, 0.95) * seconds
        killed = run(config, out, kill_after=moment) < 0
        where = _progress_at_kill(out)
        rerun = run(config, out)
        problems = compare(expected, out)
        failures += bool(problems)
        print(f"trial {trial}: killed at {moment:.0f} s ({'killed' if killed else 'finished first'}; {where}), rerun "
              f"{rerun:.0f} s: {'identical' if not problems else 'DIFFERENT: ' + ', '.join(problems[:5])}")
    print(f"{args.trials - failures}/{args.trials} trials identical to the uninterrupted run")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
