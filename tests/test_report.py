"""Tests of the Markdown and PNG study report on the tiny study of `test_phase_f`."""

from pathlib import Path

import matplotlib.image
import pytest
from test_phase_f import tiny_config
from test_phase_g import compared_study

from fly64.errors import InputError
from studies.fly64_dose_overlap import layout
from studies.fly64_dose_overlap.design import get_study_design
from studies.fly64_dose_overlap.report import _design_section, dose_trend, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FIGURES = (
    "reconstructions_amplitude.png",
    "reconstructions_phase.png",
    "metrics_vs_dose.png",
    "frc_curves.png",
    "training_loss.png",
)


@pytest.fixture(scope="session")
def report_path(tmp_path_factory) -> Path:
    return write_report(tiny_config(), compared_study(tmp_path_factory))


@pytest.fixture(scope="session")
def report_text(report_path) -> str:
    return report_path.read_text(encoding="utf-8")


def test_report_path(report_path):
    assert report_path == layout.analysis_root(report_path.parents[1]) / "report.md"


def test_report_figures_are_png(report_path):
    for name in FIGURES:
        assert (report_path.parent / "figures" / name).read_bytes()[:8] == PNG_SIGNATURE, name


def test_report_figures_load_as_rgba_images(report_path):
    for name in FIGURES:
        image = matplotlib.image.imread(report_path.parent / "figures" / name)
        assert image.ndim == 3, name
        assert image.shape[2] == 4, name
        assert min(image.shape[:2]) > 100, name


def test_report_links_every_figure(report_text):
    for name in FIGURES:
        assert f"(figures/{name})" in report_text, name


def test_report_sections(report_text):
    headings = [line for line in report_text.splitlines() if line.startswith("## ")]
    assert headings == [
        "## Design",
        "## Data",
        "## Training (Phase E)",
        "## Reconstruction (Phase F)",
        "## Comparison with the ground truth (Phase G)",
        "## Trends with dose (measured)",
        "## PtychoPINN against the references",
        "## Missing and failed jobs",
    ]


def test_report_states_measured_photons(report_text):
    photon_rows = [line for line in report_text.splitlines() if line.startswith("| 1e+03 |") and "yes" in line]
    assert len(photon_rows) == 1


def test_report_states_overlap_metrics(report_text):
    assert "| 1e+05 | dense | test |" in report_text


def test_report_states_inference_times(report_text):
    assert "| 1e+05 | dense | PtychoPINN | completed | 26 |" in report_text


def test_report_lists_missing_sparse_view(report_text):
    assert "Not reconstructed: PtychoPINN sparse at dose 1e+05" in report_text


def test_report_gives_trend_verdicts(report_text):
    trend_rows = [line for line in report_text.splitlines() if line.startswith("| PtychoPINN | dense | SSIM | phase |")]
    assert len(trend_rows) == 1


def test_design_section_states_spacing_phase_d_used():
    """With `spacing_rule = "probe_overlap"` Phase D's spacing differs from the design's (1 - f) x N."""
    overlap_rows = [{"view": "dense", "spacing_threshold_px": 6.3}, {"view": "sparse", "spacing_threshold_px": 18.1}]
    section = _design_section({"design": get_study_design(), "overlap": overlap_rows})
    assert "dense (target overlap 0.7, spacing threshold 6.3 px)" in section


def test_design_section_without_phase_d_states_design_spacing():
    section = _design_section({"design": get_study_design(), "overlap": []})
    assert "dense (target overlap 0.7, spacing threshold 38.4 px)" in section


def test_report_requires_comparison(tmp_path):
    with pytest.raises(InputError, match="comparison_manifest.json"):
        write_report(tiny_config(), tmp_path)


def test_trend_improves_every_step():
    assert dose_trend([1e3, 1e4, 1e5], [0.5, 0.6, 0.7], "ssim")["verdict"] == "improves with every dose step"


def test_trend_flat_does_not_improve():
    assert dose_trend([1e3, 1e4, 1e5], [0.5, 0.505, 0.5], "ssim")["verdict"] == "does not improve with dose"


def test_trend_mixed_steps():
    assert dose_trend([1e3, 1e4, 1e5], [0.5, 0.6, 0.4], "ssim")["verdict"] == "improves at some dose steps only"


def test_trend_resolution_lower_is_better():
    assert dose_trend([1e3, 1e5], [10.0, 5.0], "frc50")["verdict"] == "improves with every dose step"


def test_trend_single_dose():
    assert dose_trend([1e3], [0.5], "ssim")["verdict"] == "single dose"
