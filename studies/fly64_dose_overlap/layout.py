"""Artifact layout of a study root.

```
<root>/data/phase_c/dose_<d>/patched_{train,test}.npz
<root>/data/phase_d/dose_<d>/<view>/<view>_{train,test}.npz (+ <view>_{train,test}_metrics.json)
<root>/phase_e/dose_<d>/<view>/gs<g>/{wts.h5.zip, train.log, result.json}
<root>/phase_e/training_manifest.json, skip_summary.json
<root>/phase_f/dose_<d>/<view>/<split>/...
<root>/analysis/...
```
"""

from pathlib import Path

from studies.fly64_dose_overlap.design import dose_folder_name

BUNDLE_NAME = "wts.h5.zip"
TRAIN_LOG_NAME = "train.log"
JOB_RESULT_NAME = "result.json"
TRAINING_MANIFEST_NAME = "training_manifest.json"
SKIP_SUMMARY_NAME = "skip_summary.json"
SPLITS = ("train", "test")
BASELINE_VIEW = "baseline"


def phase_c_root(root: Path) -> Path:
    return Path(root) / "data" / "phase_c"


def phase_d_root(root: Path) -> Path:
    return Path(root) / "data" / "phase_d"


def phase_e_root(root: Path) -> Path:
    return Path(root) / "phase_e"


def phase_f_root(root: Path) -> Path:
    return Path(root) / "phase_f"


def analysis_root(root: Path) -> Path:
    return Path(root) / "analysis"


def phase_c_file(phase_c: Path, dose_photons: float, split: str) -> Path:
    """Return `<phase_c>/dose_<d>/patched_<split>.npz`."""
    return Path(phase_c) / dose_folder_name(dose_photons) / f"patched_{split}.npz"


def phase_d_file(phase_d: Path, dose_photons: float, view: str, split: str) -> Path:
    """Return `<phase_d>/dose_<d>/<view>/<view>_<split>.npz`."""
    return Path(phase_d) / dose_folder_name(dose_photons) / view / f"{view}_{split}.npz"


def phase_d_metrics_file(phase_d: Path, dose_photons: float, view: str, split: str) -> Path:
    """Return `<phase_d>/dose_<d>/<view>/<view>_<split>_metrics.json`."""
    return Path(phase_d) / dose_folder_name(dose_photons) / view / f"{view}_{split}_metrics.json"


def job_dir(artifact_root: Path, dose_photons: float, view: str, gridsize: int) -> Path:
    """Return `<artifact_root>/dose_<d>/<view>/gs<g>`, the folder of one training job."""
    return Path(artifact_root) / dose_folder_name(dose_photons) / view / f"gs{gridsize}"
