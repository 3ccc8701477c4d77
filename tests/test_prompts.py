import pytest

from dermsynth.data.prompts import render_prompt, validate_template
from dermsynth.errors import DermsynthError

TEMPLATE = "dermoscopy image of a {lesion}[ on the {anatom_site}][ of a {age_approx} year old {sex}]"


def test_full_metadata_prompt():
    row = {"label": "malignant", "diagnosis": "melanoma", "anatom_site": "lower extremity", "age_approx": 55.0,
           "sex": "male"}
    assert render_prompt(TEMPLATE, row) == (
        "dermoscopy image of a malignant melanoma on the lower extremity of a 55 year old male")


def test_missing_fields_drop_their_optional_part_cleanly():
    row = {"label": "benign", "diagnosis": None, "anatom_site": float("nan"), "age_approx": 80.0, "sex": None}
    assert render_prompt(TEMPLATE, row) == "dermoscopy image of a benign skin lesion"


def test_article_follows_the_next_word():
    row = {"label": "basal_cell_carcinoma", "age_approx": 80, "sex": "female", "diagnosis": "actinic keratosis"}
    assert render_prompt(TEMPLATE, row) == "dermoscopy image of an actinic keratosis of an 80 year old female"


def test_unknown_template_field_is_a_user_error():
    with pytest.raises(DermsynthError, match="unknown field"):
        validate_template("photo of {colour}", {"label", "lesion"})
