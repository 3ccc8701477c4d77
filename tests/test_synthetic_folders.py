"""Synthetic folders made elsewhere go through the real images' preprocessing (cached) before validation."""

from __future__ import annotations

import json

from PIL import Image

from dermsynth.data.config import PreprocessConfig
from dermsynth.data.synthetic_folders import made_by_dermsynth, preprocessed_copy
from dermsynth.evaluate.validate import validate
from tests.conftest import lesion_image
from tests.test_validate import config, prep  # noqa: F401 (module fixture)


def third_party(root, per_class: int = 12):
    """Uncropped 96x72 photos with the lesion off-centre, unlike the prepared lesion-centred squares."""
    for label in ("benign", "malignant"):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(lesion_image(300 + i, (96, 72), label == "malignant")).save(root / label / f"{i}.jpg")
    (root / "benign" / "broken.jpg").write_bytes(b"not an image")
    return root


def test_a_foreign_folder_is_preprocessed_once_and_marked_synthetic(tmp_path):
    source = third_party(tmp_path / "vendor")
    settings = PreprocessConfig(image_size=32)
    copy, record = preprocessed_copy(source, settings, tmp_path / "cache", progress=False)
    pngs = sorted(copy.rglob("*.png"))
    assert len(pngs) == 24 == record["images"] and record["skipped"] == ["benign/broken.jpg"]
    with Image.open(pngs[0]) as image:
        assert image.size == (32, 32) and image.text["synthetic"] == "true"
    stamp = pngs[0].stat().st_mtime_ns
    again, _ = preprocessed_copy(source, settings, tmp_path / "cache", progress=False)
    assert again == copy and pngs[0].stat().st_mtime_ns == stamp  # cached, not redone
    other, _ = preprocessed_copy(source, PreprocessConfig(image_size=32, center=False), tmp_path / "cache",
                                 progress=False)
    assert other != copy  # other settings: another copy
    assert not made_by_dermsynth(source)


def test_validate_preprocesses_foreign_synthetic_folders_unless_told_not_to(prep, tmp_path):  # noqa: F811
    source = third_party(tmp_path / "vendor", per_class=20)
    settings = {"regimes": ["real", "hybrid:0.25"], "seeds": 1}
    validate(config(prep, source, **settings), tmp_path / "on", progress=False)
    record = json.loads((tmp_path / "on" / "validation" / "validate.json").read_text())
    assert record["synthetic_preprocessing"]["vendor"]["preprocessed"] is True
    assert record["synthetic_preprocessing"]["vendor"]["skipped"] == 1
    assert any((tmp_path / "on" / "validation" / "synthetic-preprocessed").iterdir())
    validate(config(prep, source, synthetic_preprocess=False, **settings), tmp_path / "off", progress=False)
    record = json.loads((tmp_path / "off" / "validation" / "validate.json").read_text())
    assert record["synthetic_preprocessing"]["vendor"] == {"preprocessed": False, "why": "synthetic_preprocess is off"}


def test_a_zoomed_out_uncropped_folder_comes_out_framed_like_the_real_images(tmp_path):
    import numpy as np

    from dermsynth.data.images import square_resize
    from dermsynth.data.preprocess import process_image, segment_lesion

    settings = PreprocessConfig(image_size=64, hair_removal=False)
    seeds = range(600, 612)
    real = [process_image(lesion_image(s, (96, 72)), settings).image for s in seeds]
    vendor = tmp_path / "vendor" / "benign"
    vendor.mkdir(parents=True)
    raw = []
    for s in seeds:  # the same kind of lesion, zoomed out: a small patch in the middle of a large skin canvas
        photo = lesion_image(s, (96, 72))
        canvas = np.empty((192, 192, 3), np.uint8)  # zoomed out 2x (prepare's crop reaches 4x: MIN_BOX_FRACTION)
        canvas[:] = photo[:4, :4].reshape(-1, 3).mean(axis=0).astype(np.uint8)
        canvas[60:132, 48:144] = photo
        Image.fromarray(canvas).save(vendor / f"{s}.png")
        raw.append(square_resize(canvas, 64))
    copy, _ = preprocessed_copy(tmp_path / "vendor", settings, tmp_path / "cache", progress=False)
    processed = [np.asarray(Image.open(p)) for p in sorted(copy.rglob("*.png"))]

    def lesion_fraction(images) -> float:
        return float(np.mean([segment_lesion(image).mean() for image in images]))

    assert abs(lesion_fraction(raw) - lesion_fraction(real)) > 0.10  # as given, framed unlike the real images
    assert abs(lesion_fraction(processed) - lesion_fraction(real)) < 0.10
