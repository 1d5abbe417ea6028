"""Study design constants, their validation, and TOML config parsing."""

from pathlib import Path

import pytest

from fly64.errors import InputError
from studies.fly64_dose_overlap.config import load_config, parse_config
from studies.fly64_dose_overlap.design import StudyDesign, dose_folder_name, dose_label, get_study_design

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def test_design_defaults_match_full_study():
    design = get_study_design()
    assert design.dose_list == (1e3, 1e4, 1e5)
    assert design.gridsizes == (1, 2)
    assert design.neighbor_count == 7
    assert design.patch_size_pixels == 128
    assert design.overlap_views == {"dense": 0.7, "sparse": 0.2}
    assert design.train_test_split_axis == "y"
    assert design.rng_seeds["simulation"] == 42
    assert design.rng_seeds["grouping"] == 123
    assert design.rng_seeds["subsampling"] == 456


def test_design_spacing_thresholds():
    thresholds = get_study_design().spacing_thresholds
    assert thresholds["dense"] == pytest.approx(38.4)
    assert thresholds["sparse"] == pytest.approx(102.4)


def test_design_to_dict_is_plain_data():
    document = get_study_design().to_dict()
    assert document["dose_list"] == [1e3, 1e4, 1e5]
    assert document["spacing_thresholds"]["dense"] == pytest.approx(38.4)
    assert document["metrics_config"]["ms_ssim_sigma"] == 1.0


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"neighbor_count": 3}, "neighbor_count"),
        ({"overlap_views": {"dense": 1.0}}, "must be in [0, 1)"),
        ({"overlap_views": {"dense": -0.1}}, "must be in [0, 1)"),
        ({"dose_list": []}, "dose_list must not be empty"),
        ({"dose_list": [1e3, -5.0]}, "All doses must be positive"),
        ({"dose_list": [0.0]}, "All doses must be positive"),
    ],
)
def test_design_rejects_invalid_field(changes, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace(")", r"\)")):
        StudyDesign(**changes)


def test_design_k_message_names_c():
    with pytest.raises(ValueError, match="must be ≥ C"):
        StudyDesign(neighbor_count=3)


def test_dose_folder_and_label():
    assert dose_folder_name(1e3) == "dose_1000"
    assert dose_folder_name(1e5) == "dose_100000"
    assert dose_label(1e5) == "1e+05"


def test_shipped_configs_load():
    full = load_config(CONFIG_DIR / "fly64_dose_overlap.toml")
    assert full.design().patch_size_pixels == 128
    assert full == load_config(None)
    assert load_config(CONFIG_DIR / "smoke.toml").design().patch_size_pixels == 64
    assert load_config(CONFIG_DIR / "demo.toml").design().patch_size_pixels == 64


def test_config_unknown_key_named():
    with pytest.raises(InputError, match="unknown key simulation.object_size"):
        parse_config({"simulation": {"object_size": 10}}, source="x.toml")


def test_config_negative_dose_named():
    with pytest.raises(InputError, match=r"x.toml: \[study\] All doses must be positive"):
        parse_config({"study": {"dose_list": [-1.0]}}, source="x.toml")


def test_config_k_below_c_named():
    with pytest.raises(InputError, match="neighbor_count"):
        parse_config({"study": {"neighbor_count": 2}}, source="x.toml")


def test_config_overlap_out_of_range_named():
    with pytest.raises(InputError, match=r"overlap_views\['sparse'\] = 1.5 must be in \[0, 1\)"):
        parse_config({"study": {"overlap_views": {"dense": 0.7, "sparse": 1.5}}}, source="x.toml")


def test_config_wrong_type_named():
    with pytest.raises(InputError, match="key training.epochs"):
        parse_config({"training": {"epochs": "many"}}, source="x.toml")


def test_config_missing_file(tmp_path):
    with pytest.raises(InputError, match="config file not found"):
        load_config(tmp_path / "absent.toml")


def test_config_invalid_toml(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("[study\n")
    with pytest.raises(InputError, match="not valid TOML"):
        load_config(path)
