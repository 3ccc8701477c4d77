"""The blinded reader study: build (blinding, key apart), the page in a real browser, the server, the scoring."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dermsynth.errors import DermsynthError
from dermsynth.reader.build import StudySettings, build_study, pad_jpeg
from dermsynth.reader.score import fleiss_kappa, score_study
from tests.test_validate import make_prep, make_synthetic

CHROMIUM = Path("/usr/bin/chromium")
BROWSER = CHROMIUM.exists() or bool(os.environ.get("DERMSYNTH_REQUIRE_BROWSER"))
SETTINGS = StudySettings(n=16, size=64, practice=2, seed=3)


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("reader")
    prep = make_prep(base)
    syn = make_synthetic(base / "syn", per_class=20)
    build_study(prep, syn, base / "study", SETTINGS, progress=False)
    return base / "study"


def _copy(study: Path, tmp_path: Path) -> Path:
    target = tmp_path / "study"
    shutil.copytree(study, target)
    return target


def _key(study: Path) -> pd.DataFrame:
    return pd.read_csv(study / "key" / "answer_key.csv")


def _record(study: Path) -> dict:
    return json.loads((study / "key" / "study.json").read_text())


def _answers(study: Path, reader: str, correct: int, path: Path) -> Path:
    """An answers file for the scored images: the first ``correct`` (by name) right, the rest wrong."""
    key = _key(study)
    scored = key[~key["practice"]].sort_values("image")
    flip = {"real": "synthetic", "synthetic": "real"}
    rows = [{"image": row.image, "call": row.truth if i < correct else flip[row.truth], "confidence": 1 + i % 5}
            for i, row in enumerate(scored.itertuples())]
    path.write_text(json.dumps({"study_id": _record(study)["study_id"], "reader": reader, "answers": rows}))
    return path


# --------------------------------------------------------------------------- build and blinding


def test_build_draws_held_out_real_and_synthetic_images_per_class(study):
    key, record = _key(study), _record(study)
    scored = key[~key["practice"]]
    assert len(scored) == 16 and key["practice"].sum() == 2
    assert scored.groupby(["class", "truth"]).size().to_dict() == {
        ("benign", "real"): 4, ("benign", "synthetic"): 4, ("malignant", "real"): 4, ("malignant", "synthetic"): 4}
    metadata = pd.read_csv(study.parent / "prep" / "metadata.csv", dtype={"image_id": str})
    held_out = set(metadata.loc[metadata["split"].isin(["val", "test"]), "image_id"])
    assert set(key.loc[key["truth"] == "real", "source"]) <= held_out  # never a training image
    assert key["image"].is_unique and all(re.fullmatch(r"[0-9a-f]{16}\.jpg", n) for n in key["image"])
    assert record["study_id"] == hashlib.sha256((study / "key" / "answer_key.csv").read_bytes()).hexdigest()[:16]
    assert not any(p.suffix == ".csv" for p in (study / "reader").rglob("*"))  # the key stays apart


def test_nothing_but_the_pixels_tells_real_from_synthetic(study):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import cross_val_predict

    key = _key(study)
    features, labels = [], []
    for row in key.itertuples():
        path = study / "reader" / "images" / row.image
        image = Image.open(path)
        info = {k: v for k, v in image.info.items() if k != "comment"}  # comments: zero-byte padding only
        assert image.size == (64, 64) and image.mode == "RGB" and "exif" not in info and "icc_profile" not in info
        assert set(image.info.get("comment", b"")) <= {0}
        features.append([path.stat().st_size, len(info), len(json.dumps(info, default=str))])
        labels.append(row.truth == "synthetic")
    assert len({f[0] for f in features}) == 1  # every file the same length
    scores = cross_val_predict(LogisticRegression(), np.array(features, float), labels, cv=3,
                               method="predict_proba")[:, 1]
    assert roc_auc_score(labels, scores) <= 0.6
    check = _record(study)["blinding"]  # the build's own check says the same
    assert check["auroc"] <= 0.6 and check["distinct_file_sizes"] == 1
    # The page carries no truth for a scored image.
    page = (study / "reader" / "index.html").read_text()
    items = json.loads(re.search(r"const ITEMS = (\[.*?\]);\n", page, re.S).group(1))
    assert all(set(i) == {"image", "practice", "data"} for i in items if not i["practice"])
    assert "synthetic=true" not in page and ".png" not in page


def test_blinding_check_catches_files_that_give_the_origin_away(study, tmp_path):
    from dermsynth.reader.build import blinding_check, blinding_sentence

    study = _copy(study, tmp_path)
    key = _key(study)
    images = study / "reader" / "images"
    for row in key.itertuples():  # what an unpadded build would leave: synthetic files smaller than real ones
        if row.truth == "synthetic":
            path = images / row.image
            path.write_bytes(path.read_bytes()[:-400])
    check = blinding_check(images, key)
    assert check["auroc"] > 0.9 and check["distinct_file_sizes"] > 1
    assert "NOT BLIND" in blinding_sentence(check)


def test_padding_keeps_the_pixels():
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(buffer, "JPEG")
    data = buffer.getvalue()
    for extra in (4, 5, 70000, 200000):
        padded = pad_jpeg(data, len(data) + extra)
        assert len(padded) == len(data) + extra
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(padded))), np.asarray(Image.open(io.BytesIO(data))))


def test_build_refuses_bad_settings_and_keeps_an_existing_folder(study, tmp_path, cli):
    prep, syn = study.parent / "prep", study.parent / "syn"
    code, _, err = cli("reader-study", "build", "--real", prep, "--synthetic", syn, "--out", tmp_path / "s",
                       "--synthetic-fraction", "1")
    assert code == 2 and "--synthetic-fraction" in err and "Traceback" not in err
    with pytest.raises(DermsynthError, match="needs 60 real"):
        build_study(prep, syn, tmp_path / "big", StudySettings(per_class=120, size=64), progress=False)
    assert not (tmp_path / "big").exists()
    with pytest.raises(DermsynthError, match="not an empty folder"):
        build_study(prep, syn, study, SETTINGS, progress=False)


# --------------------------------------------------------------------------- scoring


def test_score_gives_the_planted_accuracy_with_exact_intervals(study, tmp_path):
    study = _copy(study, tmp_path)
    a = _answers(study, "ana", 12, tmp_path / "a.json")
    b = _answers(study, "ben", 8, tmp_path / "b.json")
    result = score_study(study, [a, b])
    assert result["per_reader"]["ana"]["accuracy"] == 0.75 and result["per_reader"]["ben"]["accuracy"] == 0.5
    ana = result["per_reader"]["ana"]
    assert ana["ci_lo"] == pytest.approx(0.4762, abs=1e-3) and ana["ci_hi"] == pytest.approx(0.9273, abs=1e-3)
    assert ana["p_vs_chance"] == pytest.approx(0.0768, abs=1e-3)
    assert result["pooled"]["answers"] == 32 and result["pooled"]["correct"] == 20
    assert result["agreement"]["method"] == "Cohen's kappa" and result["agreement"]["images"] == 16
    assert set(result["per_class"]) == {"benign", "malignant"}
    assert result["convincing"] and all(c["called_real"] >= result["convincing"][-1]["called_real"]
                                        for c in result["convincing"])
    assert "| ana | 16 | 75.0 %" in (study / "score" / "score.md").read_text()


def test_fleiss_kappa_of_two_readers_is_scott_s_pi_and_one_for_full_agreement():
    rng = np.random.default_rng(1)
    calls = rng.integers(0, 2, (40, 2))
    observed = (calls[:, 0] == calls[:, 1]).mean()
    share = calls.mean()
    expected = share**2 + (1 - share) ** 2
    assert fleiss_kappa(calls) == pytest.approx((observed - expected) / (1 - expected))
    assert fleiss_kappa(np.repeat(calls[:, :1], 4, axis=1)) == pytest.approx(1.0)


def test_score_errors_are_one_line(study, tmp_path, cli):
    study = _copy(study, tmp_path)
    good = _answers(study, "ana", 10, tmp_path / "a.json")
    other = json.loads(good.read_text()) | {"study_id": "0123456789abcdef"}
    (tmp_path / "other.json").write_text(json.dumps(other))
    (tmp_path / "empty.json").write_text("")
    cases = [([good, good], "appears twice"), ([tmp_path / "other.json"], "not for this study"),
             ([tmp_path / "empty.json"], "holds no answers")]
    for files, message in cases:
        code, _, err = cli("reader-study", "score", study, *files)
        assert code == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    image = next((study / "reader" / "images").iterdir())
    original = image.read_bytes()
    image.write_bytes(original[:-10] + bytes(10))
    with pytest.raises(DermsynthError, match="edited after the build"):
        score_study(study, [good])
    image.write_bytes(original)
    key = study / "key" / "answer_key.csv"
    key.write_text(key.read_text().replace("synthetic", "real", 1))
    with pytest.raises(DermsynthError, match="answer key was changed after the build"):
        score_study(study, [good])


# --------------------------------------------------------------------------- the server


def test_server_refuses_other_machines_and_keeps_readers_apart(study, tmp_path):
    from dermsynth.reader.serve import create_app

    study = _copy(study, tmp_path)
    app = create_app(study)
    assert app.test_client().get("/", environ_base={"REMOTE_ADDR": "10.1.2.3"}).status_code == 403
    assert app.test_client().get("/").status_code == 200
    key, study_id = _key(study), _record(study)["study_id"]
    images = key.loc[~key["practice"], "image"].tolist()

    def answer_all(reader: str, call: str) -> None:
        client = app.test_client()
        for image in images:
            reply = client.post("/api/answer", json={"study_id": study_id, "reader": reader, "image": image,
                                                     "call": call, "confidence": 3})
            assert reply.status_code == 200, reply.get_json()

    threads = [threading.Thread(target=answer_all, args=(r, c)) for r, c in (("ana", "real"), ("ben", "synthetic"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    client = app.test_client()
    for reader, call in (("ana", "real"), ("ben", "synthetic")):
        mine = client.get("/api/answers", query_string={"reader": reader}).get_json()["answers"]
        assert len(mine) == len(images) and {a["call"] for a in mine} == {call}
    bad = client.post("/api/answer", json={"study_id": "nope", "reader": "ana", "image": images[0], "call": "real",
                                           "confidence": 3})
    assert bad.status_code == 400


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(study: Path, port: int) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-m", "dermsynth", "reader-study", "serve", str(study), "--port",
                                str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1)
            return process
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise AssertionError("the server did not start")


def _post(port: int, payload: dict) -> None:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/answer", json.dumps(payload).encode(),
                                     {"Content-Type": "application/json"})
    assert json.loads(urllib.request.urlopen(request, timeout=5).read())["ok"]


def test_server_killed_and_restarted_loses_no_confirmed_answer(study, tmp_path):
    study = _copy(study, tmp_path)
    key, study_id = _key(study), _record(study)["study_id"]
    images = key.loc[~key["practice"], "image"].tolist()
    port = _free_port()
    server = _start(study, port)
    try:
        for image in images[:9]:
            _post(port, {"study_id": study_id, "reader": "ana", "image": image, "call": "real", "confidence": 2})
        os.kill(server.pid, signal.SIGKILL)
        server.wait(5)
        server = _start(study, port)
        exported = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/export?reader=ana").read())
        assert sorted(a["image"] for a in exported["answers"]) == sorted(images[:9])
    finally:
        server.kill()
        server.wait(5)
    (tmp_path / "ana.json").write_text(json.dumps(exported))
    assert score_study(study, [tmp_path / "ana.json"])["per_reader"]["ana"]["answers"] == 9


# --------------------------------------------------------------------------- the page in a real browser


def _name_of(src: str, hashes: dict[str, str]) -> str:
    digest = hashlib.sha256(base64.b64decode(src.split(",", 1)[1])).hexdigest()
    return next(name for name, h in hashes.items() if h == digest)


@pytest.mark.skipif(not BROWSER, reason="needs /usr/bin/chromium")
def test_page_answered_by_keyboard_survives_a_reload_and_exports_the_planted_answers(study, tmp_path):
    from playwright.sync_api import sync_playwright

    study = _copy(study, tmp_path)
    record, key = _record(study), _key(study).set_index("image")
    flip = {"real": "synthetic", "synthetic": "real"}
    url = (study / "reader" / "index.html").as_uri()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        context = browser.new_context(accept_downloads=True)
        page = context.new_page()
        page.goto(url)
        page.fill("#reader", "dr one")
        page.keyboard.press("Enter")
        scored = 0
        while page.is_visible("#task"):
            name = _name_of(page.get_attribute("#image", "src"), record["image_sha256"])
            truth = key.loc[name, "truth"]
            if key.loc[name, "practice"]:
                page.keyboard.press("r")
                page.keyboard.press("4")
                page.keyboard.press("Enter")
                assert "This image is " + truth in page.inner_text("#feedback")
                page.keyboard.press("Enter")
                continue
            page.keyboard.press("s" if (truth if scored < 12 else flip[truth]) == "synthetic" else "r")
            page.keyboard.press(str(1 + scored % 5))
            page.keyboard.press("Enter")
            scored += 1
            if scored == 8:  # a closed tab mid-way: the reader comes back and goes on where they were
                page.reload()
                assert page.input_value("#reader") == "dr one"
                page.click("#begin")
                assert page.inner_text("#counter").startswith("8 of 16")
        assert scored == 16 and page.is_visible("#done")
        with page.expect_download() as download:
            page.click("#export-end")
        download.value.save_as(tmp_path / "answers.json")
        page.screenshot(path=str(tmp_path / "page.png"))
        browser.close()
    exported = json.loads((tmp_path / "answers.json").read_text())
    assert exported["study_id"] == record["study_id"] and exported["reader"] == "dr one"
    result = score_study(study, [tmp_path / "answers.json"])
    assert result["per_reader"]["dr one"]["accuracy"] == 0.75 and result["per_reader"]["dr one"]["answers"] == 16


def test_report_section_on_a_scored_simulated_study(study, tmp_path):
    from dermsynth.report.build import build_report

    run = tmp_path / "run"
    shutil.copytree(study.parent / "prep", run / "prepared")
    reader_study = run / "reader_study"
    shutil.copytree(study, reader_study)
    html_path = build_report(run)[0]
    assert "Not scored yet" in html_path.read_text()
    assert "Blinding check: a classifier on file bytes" in html_path.read_text()
    readers = [_answers(reader_study, name, k, tmp_path / f"{name}.json") for name, k in (("ana", 14), ("ben", 9))]
    score_study(reader_study, readers)
    html = build_report(run)[0].read_text()
    section = html[html.index('id="reader-study"'):html.index('id="provenance"')]
    assert "ana" in section and "87.5 %" in section and "ben" in section and "Cohen&#39;s kappa" in section
    assert "against 50 % for guessing" in section and "Synthetic images most often called real" in section
    summary = (run / "summary.md").read_text()
    assert "## Reader study" in summary and "| ana | 16 | 87.5 %" in summary
