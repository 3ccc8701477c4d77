import contextlib
import io
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from dermsynth.audit.config import AuditConfig
from dermsynth.audit.fidelity import fid, kid, prdc
from dermsynth.audit.memorization import MemorizationConfig, TrainingIndex, light_copies, threshold
from dermsynth.audit.run import audit
from dermsynth.data.config import PrepareConfig
from dermsynth.data.dataset import load_prepared
from dermsynth.data.images import load_rgb
from dermsynth.data.prepare import prepare


@pytest.fixture(scope="module")
def sample_prep(tmp_path_factory):
    out = tmp_path_factory.mktemp("audit") / "prep"
    prepare(PrepareConfig(dataset="sample", preprocess={"image_size": 64}), out, progress=False)
    return load_prepared(out)


def _images(prepared, split):
    return np.stack([load_rgb(p) for p in prepared.paths(prepared.split(split))])


# --------------------------------------------------------------------------- fidelity against references


def _features(seed, n=300, d=16, shift=0.0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) * 0.3 + shift).astype(np.float64)


def test_fid_matches_torchmetrics_and_is_zero_for_identical_sets():
    from torchmetrics.image.fid import _compute_fid

    real, fake = _features(0), _features(1, shift=0.5)
    stats = [(torch.from_numpy(x.mean(0)), torch.from_numpy(np.cov(x, rowvar=False))) for x in (real, fake)]
    reference = float(_compute_fid(stats[0][0], stats[0][1], stats[1][0], stats[1][1]))
    assert fid(real, fake) == pytest.approx(reference, abs=1e-4)
    assert abs(fid(real, real)) < 1e-6
    assert math.isnan(fid(real[:1], fake))


def test_fid_with_fewer_images_than_feature_dimensions_matches_sqrtm():
    from scipy import linalg

    real, fake = _features(2, n=12, d=64), _features(3, n=12, d=64, shift=0.2)
    cov_r, cov_f = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)  # both of rank 11
    mean_term = ((real.mean(0) - fake.mean(0)) ** 2).sum()
    reference = mean_term + np.trace(cov_r) + np.trace(cov_f) - 2 * np.trace(linalg.sqrtm(cov_r @ cov_f).real)
    assert fid(real, fake) == pytest.approx(reference, rel=1e-4)


def _poly_mmd_unbiased(x, y):
    d = x.shape[1]
    k = lambda a, b: (a @ b.T / d + 1) ** 3  # noqa: E731
    m = len(x)
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    return ((kxx.sum() - np.trace(kxx)) + (kyy.sum() - np.trace(kyy))) / (m * (m - 1)) - 2 * kxy.mean()


def test_kid_matches_the_direct_formula_and_separates_sets():
    real, fake = _features(0, n=200), _features(1, n=200, shift=0.5)
    mean, sd = kid(real, fake, subsets=1, subset_size=200)
    assert mean == pytest.approx(_poly_mmd_unbiased(real, fake), abs=1e-6) and sd == 0
    pool = _features(0, n=400)  # two independent halves of one distribution
    same, _ = kid(pool[:200], pool[200:], subsets=10, subset_size=100)
    different, _ = kid(pool[:200], fake, subsets=10, subset_size=100)
    assert abs(same) < 0.05 * different


def test_prdc_matches_the_reference_package():
    prdc_package = pytest.importorskip("prdc")
    real, fake = _features(2, n=250).astype(np.float32), _features(3, n=200, shift=0.2).astype(np.float32)
    with contextlib.redirect_stdout(io.StringIO()):
        reference = prdc_package.compute_prdc(real, fake, nearest_k=5)
    ours = prdc(real, fake, k=5, chunk=64)  # small chunks: exercises the chunked path
    for key in ("precision", "recall", "density", "coverage"):
        assert ours[key] == pytest.approx(reference[key], abs=1e-6), key
    identical = prdc(real, real, k=5)
    assert identical["precision"] == 1.0 and identical["recall"] == 1.0 and identical["coverage"] == 1.0


# --------------------------------------------------------------------------- memorization


def test_transformed_training_copies_are_flagged_and_held_out_images_are_not(sample_prep):
    train, val, test = (_images(sample_prep, s) for s in ("train", "val", "test"))
    index = TrainingIndex(train, config=MemorizationConfig())
    cutoff = threshold(index.search(val).pixel_similarity, 0.995)
    false_flags = (index.search(test).pixel_similarity > cutoff).mean()
    assert false_flags <= 0.01
    pick = np.random.default_rng(0).choice(len(train), 60, replace=False)
    copies = light_copies(train[pick], seed=1)
    rates = {}
    for name, images in copies.items():
        result = index.search(images)
        rates[name] = (result.pixel_similarity > cutoff).mean()
        assert (result.pixel_index == pick).mean() >= 0.9, name  # and the right source image is named
    assert np.mean(list(rates.values())) >= 0.95, rates
    assert min(rates.values()) >= 0.85, rates


def _synthetic_folder(root, prepared, copies_per_class=20, novel_split="test"):
    """Training images copied with light transforms (must be flagged) + held-out real images (must not)."""
    train = prepared.split("train")
    rng = np.random.default_rng(3)
    for label in prepared.classes:
        (root / "images" / label).mkdir(parents=True)
    rows = train.groupby("label").head(copies_per_class)
    copied = []
    for i, row in enumerate(rows.itertuples()):
        image = load_rgb(prepared.root / row.path)
        transforms = light_copies(image[None], seed=i)
        name = list(transforms)[i % len(transforms)]
        Image.fromarray(transforms[name][0]).save(root / "images" / row.label / f"copy_{i}.png")
        copied.append(f"copy_{i}")
    held_out = prepared.split(novel_split)
    for row in held_out.iloc[rng.permutation(len(held_out))].itertuples():
        target = root / "images" / row.label / f"real_{row.image_id}.png"
        Image.fromarray(load_rgb(prepared.root / row.path)).save(target)
    return copied


def test_audit_end_to_end_flags_injected_copies(sample_prep, tmp_path, cli):
    synthetic = tmp_path / "syn"
    copied = _synthetic_folder(synthetic, sample_prep)
    config = tmp_path / "audit.yaml"
    config.write_text("classifier_epochs: 2\npositive_controls: 20\nkid_subsets: 5\n"
                      "synthetic_preprocess: false\n")  # copies of prepared images, as a generator writes
    code, stdout, stderr = cli("audit", "--real", sample_prep.root, "--synthetic", synthetic, "--out", tmp_path / "a",
                               "--config", config, "--quiet")
    assert code == 0, stderr
    report = json.loads((tmp_path / "a" / "audit.json").read_text())

    nearest = pd.read_csv(tmp_path / "a" / "nearest.csv")
    nearest["name"] = nearest["path"].map(lambda p: p.rsplit("/", 1)[-1].removesuffix(".png"))
    is_copy = nearest["name"].isin(copied)
    assert nearest.loc[is_copy, "flagged"].mean() >= 0.95
    assert nearest.loc[~is_copy, "flagged"].mean() <= 0.02
    assert set(pd.read_csv(tmp_path / "a" / "flagged.csv")["path"]) == set(nearest.loc[nearest.flagged, "path"])
    assert report["feature_space"]["description"].startswith("penultimate features of a small CNN")
    assert report["memorization"]["positive_controls"]["overall"] >= 0.9
    ref = report["fidelity"]["overall"]["real_test_vs_train"]
    assert ref["fid"] > 0 and 0 <= ref["precision"] <= 1
    assert set(report["fidelity"]["per_class"]) == {"benign", "malignant"}
    assert (tmp_path / "a" / "top_pairs.png").is_file() and (tmp_path / "a" / "similarity.png").is_file()
    assert "FID" in stdout
    for name in ("benign", "malignant"):
        assert 0 <= report["c2st"]["per_class"][name]["synthetic_vs_real"]["auroc"] <= 1
        assert report["domain_gap"]["per_class"][name]["summary"].startswith(f"synthetic {name}")


def test_audit_says_how_a_darkened_folder_differs(sample_prep, tmp_path):
    """A "synthetic" folder of darkened held-out real images: C2ST tells them apart, L* ranks first."""
    synthetic = tmp_path / "syn" / "images"
    for row in pd.concat([sample_prep.split("val"), sample_prep.split("test")]).itertuples():
        (synthetic / row.label).mkdir(parents=True, exist_ok=True)
        image = load_rgb(sample_prep.root / row.path).astype(np.float32) * 0.7
        Image.fromarray(image.astype(np.uint8)).save(synthetic / row.label / f"{row.image_id}.png")
    report = audit(sample_prep.root, tmp_path / "syn", tmp_path / "a", AuditConfig(
        classifier_epochs=1, positive_controls=0, kid_subsets=2, c2st_epochs=6, synthetic_preprocess=False),
        progress=False)
    benign = report["domain_gap"]["per_class"]["benign"]
    assert benign["rows"][0]["statistic"].endswith("L_mean")
    assert "L*" in benign["summary"]
    assert report["c2st"]["per_class"]["benign"]["synthetic_vs_real"]["auroc"] >= 0.9
    reference = report["c2st"]["per_class"]["benign"]["real_held_out_vs_real"]
    assert reference["ci_low"] <= 0.5 + 0.1 and reference["auroc"] < 0.75


def test_audit_partial_inputs_are_marked_not_fatal(sample_prep, tmp_path):
    synthetic = tmp_path / "syn" / "benign"
    synthetic.mkdir(parents=True)
    row = sample_prep.split("test").iloc[0]
    image = load_rgb(sample_prep.root / row.path)
    Image.fromarray(image).resize((80, 80)).save(synthetic / "one.png")  # another size than the real 64 px
    report = audit(sample_prep.root, tmp_path / "syn", tmp_path / "a", AuditConfig(
        classifier_epochs=1, positive_controls=0, kid_subsets=2, synthetic_preprocess=False), progress=False)
    assert report["partial"] is True
    assert math.isnan(report["fidelity"]["overall"]["synthetic_vs_train"]["fid"])
    assert report["fidelity"]["per_class"]["malignant"] is None
    assert any("malignant" in note for note in report["notes"])
    assert report["counts"]["synthetic"] == 1


def test_audit_bad_inputs_are_one_line_errors(sample_prep, tmp_path, cli):
    empty = tmp_path / "empty"
    empty.mkdir()
    for args, expected in [
        (("--synthetic", empty), "no class sub-folders"),
        (("--synthetic", tmp_path / "missing"), "synthetic folder not found"),
    ]:
        code, _, stderr = cli("audit", "--real", sample_prep.root, *args, "--out", tmp_path / "o")
        assert code == 2 and expected in stderr and len(stderr.strip().splitlines()) == 1, stderr
    (empty / "benign").mkdir()
    code, _, stderr = cli("audit", "--real", sample_prep.root, "--synthetic", empty, "--out", tmp_path / "o")
    assert code == 2 and "no PNG/JPEG images" in stderr
    odd = tmp_path / "odd" / "melanoma"
    odd.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(odd / "x.png")
    code, _, stderr = cli("audit", "--real", sample_prep.root, "--synthetic", tmp_path / "odd", "--out", tmp_path / "o")
    assert code == 2 and "not a class of the real data" in stderr
    code, _, stderr = cli("audit", "--real", sample_prep.root, "--synthetic", tmp_path / "odd", "--out", tmp_path / "o",
                          "--features", "nonsense")
    assert code == 2


def test_feature_network_learns_from_one_patient_grouped_half_of_train():
    import pandas as pd

    from dermsynth.audit.config import AuditConfig
    from dermsynth.audit.run import LoadedSet, feature_training_rows

    frame = pd.DataFrame({"image_id": [f"i{k}" for k in range(60)], "patient_id": [f"p{k // 3}" for k in range(60)],
                          "lesion_id": None, "target": [(k // 3) % 2 for k in range(60)]})
    train = LoadedSet("real train", frame, np.zeros((60, 4, 4, 3), np.uint8))
    teach = feature_training_rows(train, AuditConfig())
    assert 20 <= teach.sum() <= 40
    assert not set(frame["patient_id"][teach]) & set(frame["patient_id"][~teach])  # no patient in both halves
    assert set(frame["target"][teach]) == set(frame["target"][~teach]) == {0, 1}
    assert feature_training_rows(train, AuditConfig(feature_split="all")).all()
    assert feature_training_rows(train, AuditConfig(features="hf:some/model")).all()  # trained elsewhere


def test_fidelity_of_a_smaller_generator_is_judged_at_its_own_resolution(sample_prep, tmp_path):
    """Held-out real images saved at 32 px: a perfect 32 px generator. Matched, its FID ratio is near 1; the figures
    at the audit's 64 px, where the real images keep their detail, are kept beside them."""
    synthetic = tmp_path / "syn"
    for row in pd.concat([sample_prep.split("val"), sample_prep.split("test")]).itertuples():
        (synthetic / row.label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(load_rgb(sample_prep.root / row.path)).resize((32, 32), Image.Resampling.BICUBIC).save(
            synthetic / row.label / f"{row.image_id}.png")
    settings = {"classifier_epochs": 3, "positive_controls": 0, "kid_subsets": 5, "c2st": False, "domain_gap": False,
                "synthetic_preprocess": False}  # prepared images stand in for a generator's output
    matched = audit(sample_prep.root, synthetic, tmp_path / "m", AuditConfig(**settings), progress=False)["fidelity"]
    assert matched["resolution"] == 32 and matched["at_audit_size"]["resolution"] == 64
    assert matched["overall"]["fid_ratio"] < 1.6
    real_matched = matched["overall"]["real_test_vs_train"]["fid"]
    assert real_matched != pytest.approx(matched["at_audit_size"]["overall"]["real_test_vs_train"]["fid"])
    plain = audit(sample_prep.root, synthetic, tmp_path / "p", AuditConfig(**settings, fidelity_resolution="audit"),
                  progress=False)["fidelity"]
    assert "at_audit_size" not in plain and plain["resolution"] == 64
    assert plain["overall"]["fid_ratio"] == pytest.approx(matched["at_audit_size"]["overall"]["fid_ratio"])


def test_overall_fidelity_compares_sets_in_the_same_class_mix(sample_prep, tmp_path):
    """Held-out real images, as many malignant as benign: a perfect generator drawn class-balanced. Compared in the
    real class mix it scores like real; the per-class figures are untouched by the mix."""
    synthetic = tmp_path / "syn"
    held_out = pd.concat([sample_prep.split("val"), sample_prep.split("test")])
    per_class = held_out["label"].value_counts().min()
    for row in held_out.groupby("label").head(per_class).itertuples():
        (synthetic / row.label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(load_rgb(sample_prep.root / row.path)).save(synthetic / row.label / f"{row.image_id}.png")
    settings = {"classifier_epochs": 3, "positive_controls": 0, "kid_subsets": 5, "c2st": False, "domain_gap": False,
                "synthetic_preprocess": False}  # prepared images stand in for a generator's output
    overall = audit(sample_prep.root, synthetic, tmp_path / "a", AuditConfig(**settings), progress=False)[
        "fidelity"]["overall"]
    assert overall["synthetic_vs_train"]["n_fake"] == overall["real_test_vs_train"]["n_fake"]
    assert overall["synthetic_vs_train"]["n_fake"] < 2 * per_class  # fewer benign drawn than the folder holds
    assert overall["fid_ratio"] < 1.6
