"""Render a dermsynth report.html in headless Chromium and check that it displays as intended.

Checks: Chromium loads the page with the network blocked; the rendered DOM has the report's header; every <img>
has a ``data:image/png;base64`` source that decodes to a PNG; nothing in the DOM points at an http(s) resource;
the screenshot is not blank; with ``--require-results`` the results table (Table 1) and a verdict are present.

    python bench/check_report_render.py runs/demo/report.html --require-results \
        --save docs/images/report-screenshot.png --save-width 720

Exit code 0 when every check passes, 1 otherwise; prints one JSON object with what it found.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path

from PIL import Image

CHROMIUM = "/usr/bin/chromium"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--host-resolver-rules=MAP * ~NOTFOUND"]  # any network request would fail


class DomScan(HTMLParser):
    """Collects image sources, external references, headings and table headers of the rendered DOM."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.external: list[str] = []
        self.tables = 0
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "img":
            self.images.append(values.get("src") or "")
        if tag == "table":
            self.tables += 1
        for key in ("src", "href"):
            value = (values.get(key) or "").strip().lower()
            if value.startswith(("http:", "https:", "//")):
                self.external.append(value[:80])

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def short_temp_dir() -> Path:
    """A private folder with a short path. Chromium puts its singleton socket in $TMPDIR and aborts (SIGABRT)
    when that socket's path passes the 107-byte Unix limit, as it does under pytest's deep tmp_path."""
    base = tempfile.gettempdir()
    if len(base) > 40 and Path("/tmp").is_dir():
        base = "/tmp"
    return Path(tempfile.mkdtemp(prefix="dermsynth-chromium-", dir=base))


def run_chromium(args: list[str], user_dir: Path, timeout: float) -> subprocess.CompletedProcess:
    command = [CHROMIUM, *FLAGS, f"--user-data-dir={user_dir}", *args]
    env = {**os.environ, "TMPDIR": str(user_dir)}
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False, env=env)


def decodes_as_png(src: str) -> bool:
    prefix = "data:image/png;base64,"
    if not src.startswith(prefix):
        return False
    try:
        data = base64.b64decode(src[len(prefix):], validate=True)
    except (binascii.Error, ValueError):
        return False
    if not data.startswith(PNG_SIGNATURE):
        return False
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
    except (OSError, SyntaxError):
        return False
    return True


def blank_fraction(png: Path) -> float:
    """Share of the screenshot's pixels that are plain white (1.0 = nothing rendered)."""
    with Image.open(png) as image:
        grey = image.convert("L")
        histogram = grey.histogram()
    return sum(histogram[250:]) / max(1, sum(histogram))


def save_small(png: Path, target: Path, width: int, max_bytes: int = 500_000) -> int:
    """A downscaled, palette-quantised copy for the docs, trimmed below the content; shrinks further until
    under ``max_bytes``."""
    with Image.open(png) as image:
        image = image.convert("RGB")
    # The window is taller than most pages: drop the empty space below the last content.
    content = Image.eval(image.convert("L"), lambda v: 255 if v < 250 else 0).getbbox()
    if content:
        image = image.crop((0, 0, image.width, min(image.height, content[3] + 24)))
    while True:
        small = image.resize((width, round(image.height * width / image.width)), Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        small.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(buffer, format="PNG", optimize=True)
        if buffer.tell() < max_bytes or width <= 320:
            break
        width = int(width * 0.85)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(buffer.getvalue())
    return buffer.tell()


def check(report: Path, require_results: bool, window: str, timeout: float, save: Path | None,
          save_width: int) -> dict:
    url = report.resolve().as_uri()
    user_dir = short_temp_dir()
    try:
        shot = user_dir / "screenshot.png"
        screenshot = run_chromium([f"--screenshot={shot}", f"--window-size={window}", url], user_dir, timeout)
        dom = run_chromium(["--dump-dom", url], user_dir, timeout)
        scan = DomScan()
        scan.feed(dom.stdout)
        text = " ".join(scan.text)
        found = {
            "report": str(report),
            "dom_chars": len(dom.stdout),
            "rendered": "dermsynth study report" in text,
            "images": len(scan.images),
            "images_not_png_data_uri": sum(not decodes_as_png(src) for src in scan.images),
            "external_references": scan.external,
            "tables": scan.tables,
            "results_table": "Table 1 (extended)" in text,
            "verdict": "Verdict." in text,
            "screenshot": shot.is_file(),
            "screenshot_white_fraction": round(blank_fraction(shot), 3) if shot.is_file() else None,
        }
        if save is not None and shot.is_file():
            found["saved"], found["saved_bytes"] = str(save), save_small(shot, save, save_width)
        problems = []
        if screenshot.returncode or dom.returncode:
            problems.append(f"chromium exit codes {screenshot.returncode}/{dom.returncode}: "
                            f"{(screenshot.stderr or dom.stderr).strip()[-300:]}")
        if not found["rendered"]:
            problems.append("the rendered DOM lacks the report header")
        if found["images_not_png_data_uri"]:
            problems.append(f"{found['images_not_png_data_uri']} <img> without a decodable PNG data URI")
        if found["external_references"]:
            problems.append(f"external references: {found['external_references'][:3]}")
        if not found["screenshot"] or found["screenshot_white_fraction"] > 0.995:
            problems.append("the screenshot is missing or blank")
        if require_results and not (found["results_table"] and found["verdict"]):
            problems.append("the results table or the verdict is missing")
        found["problems"] = problems
        return found
    finally:
        shutil.rmtree(user_dir, ignore_errors=True)


def _smoke_report() -> Path:
    from dermsynth.report.build import build_report
    from dermsynth.testing.smoke_data import sample_prepared

    run = Path(tempfile.mkdtemp(prefix="report-render-"))
    sample_prepared(run / "prepared")
    return build_report(run)[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", type=Path, nargs="?", help="report.html to render")
    parser.add_argument("--require-results", action="store_true", help="fail without Table 1 and a verdict")
    parser.add_argument("--window-size", default="1280,4000", help="Chromium window (screenshot) size W,H")
    parser.add_argument("--timeout", type=float, default=180, help="seconds per Chromium call")
    parser.add_argument("--save", type=Path, help="also save a downscaled screenshot here (< 500 KB)")
    parser.add_argument("--save-width", type=int, default=720, help="width of the saved screenshot")
    parser.add_argument("--smoke", action="store_true", help="render the report of a run folder that holds only a "
                        "prepared sample: checks that it runs")
    args = parser.parse_args(argv)
    if args.smoke:
        args.report = _smoke_report()
    elif args.report is None:
        parser.error("give a report.html (or --smoke)")
    if not Path(CHROMIUM).exists():
        print(json.dumps({"problems": [f"{CHROMIUM} not found (apt-get install chromium)"]}))
        return 1
    if not args.report.is_file():
        print(json.dumps({"problems": [f"{args.report} not found"]}))
        return 1
    found = check(args.report, args.require_results, args.window_size, args.timeout, args.save, args.save_width)
    print(json.dumps(found, indent=2))
    return 1 if found["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
