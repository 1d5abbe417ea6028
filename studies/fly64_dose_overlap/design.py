"""Phase A: the study design, its constants and their validation.

The design fixes what the sweep varies (doses, overlap views, gridsizes) and what it
keeps constant (patch size, neighbour count, split, seeds). Spacing thresholds follow
from the overlap fractions: a view with target overlap `f` spaces scan positions about
`(1 - f) * N` pixels apart.
"""

import dataclasses
import math
from typing import Any

DEFAULT_DOSES_PHOTONS = (1e3, 1e4, 1e5)
DEFAULT_OVERLAP_VIEWS = {"dense": 0.7, "sparse": 0.2}
DEFAULT_RNG_SEEDS = {"simulation": 42, "grouping": 123, "subsampling": 456}
DEFAULT_METRICS_CONFIG = {
    "ms_ssim_sigma": 1.0,
    "emphasise_phase": True,
    "report_amplitude": True,
}
REQUIRED_SEEDS = ("simulation", "grouping", "subsampling")
SPLIT_AXES = ("y", "x")


@dataclasses.dataclass(frozen=True)
class StudyDesign:
    """Constants of the dose/overlap sweep.

    Attributes:
        dose_list: nominal doses, mean detected photons per diffraction pattern.
        gridsizes: group side lengths; a group contains `gridsize**2` patterns.
        neighbor_count: K, nearest neighbours from which each gridsize-2 group is drawn.
        patch_size_pixels: N, side of a diffraction pattern and object patch, in pixels.
        overlap_views: view name to target overlap fraction in [0, 1).
        train_test_split_axis: `y` (rows) or `x` (columns); train lies below the split.
        train_fraction: fraction of the scan extent along the split axis given to train.
        rng_seeds: seeds for `simulation`, `grouping` and `subsampling`.
        metrics_config: comparison settings (MS-SSIM sigma, phase emphasis).
    """

    dose_list: tuple[float, ...] = DEFAULT_DOSES_PHOTONS
    gridsizes: tuple[int, ...] = (1, 2)
    neighbor_count: int = 7
    patch_size_pixels: int = 128
    overlap_views: dict[str, float] = dataclasses.field(default_factory=lambda: dict(DEFAULT_OVERLAP_VIEWS))
    train_test_split_axis: str = "y"
    train_fraction: float = 0.8
    rng_seeds: dict[str, int] = dataclasses.field(default_factory=lambda: dict(DEFAULT_RNG_SEEDS))
    metrics_config: dict[str, Any] = dataclasses.field(default_factory=lambda: dict(DEFAULT_METRICS_CONFIG))

    def __post_init__(self) -> None:
        object.__setattr__(self, "dose_list", tuple(float(dose) for dose in self.dose_list))
        object.__setattr__(self, "gridsizes", tuple(int(size) for size in self.gridsizes))
        self.validate()

    @property
    def spacing_thresholds(self) -> dict[str, float]:
        """View name to target spacing between scan positions, `(1 - f) * N` pixels."""
        return {
            view: (1.0 - fraction) * self.patch_size_pixels
            for view, fraction in self.overlap_views.items()
        }

    @property
    def training_seed(self) -> int:
        """Seed of a training job: grouping, validation split, initialisation and batch order.

        `rng_seeds['training']` when the config sets it, else the grouping seed, so that
        training groups equal the groups behind Phase D's group metrics.
        """
        return int(self.rng_seeds.get("training", self.rng_seeds["grouping"]))

    @property
    def max_group_size(self) -> int:
        """C for the largest gridsize, `max(gridsizes)**2`."""
        return max(self.gridsizes) ** 2

    def validate(self) -> None:
        """Check every field.

        Raises:
            ValueError: naming the field and the expected value.
        """
        if not self.dose_list:
            raise ValueError("dose_list must not be empty")
        if any(not math.isfinite(dose) or dose <= 0 for dose in self.dose_list):
            raise ValueError(f"All doses must be positive (dose_list = {list(self.dose_list)})")
        if len(set(self.dose_list)) != len(self.dose_list):
            raise ValueError(f"dose_list must not repeat a dose (dose_list = {list(self.dose_list)})")
        if not self.gridsizes or any(size < 1 for size in self.gridsizes):
            raise ValueError(f"gridsizes must be positive integers (gridsizes = {list(self.gridsizes)})")
        if self.neighbor_count < self.max_group_size:
            raise ValueError(
                f"neighbor_count (K = {self.neighbor_count}) must be ≥ C = gridsize² "
                f"= {self.max_group_size} for gridsize {max(self.gridsizes)}"
            )
        if self.patch_size_pixels < 16 or self.patch_size_pixels % 8 != 0:
            raise ValueError(
                f"patch_size_pixels must be a multiple of 8 and at least 16 (patch_size_pixels = {self.patch_size_pixels})"
            )
        if not self.overlap_views:
            raise ValueError("overlap_views must name at least one view")
        for view, fraction in self.overlap_views.items():
            if not (0.0 <= fraction < 1.0):
                raise ValueError(f"overlap_views[{view!r}] = {fraction} must be in [0, 1)")
            if not view.isidentifier() or view == "baseline":
                raise ValueError(
                    f"overlap_views key {view!r} must be an identifier other than 'baseline' (it names a folder)"
                )
        if self.train_test_split_axis not in SPLIT_AXES:
            raise ValueError(
                f"train_test_split_axis must be one of {', '.join(SPLIT_AXES)} (got {self.train_test_split_axis!r})"
            )
        if not (0.0 < self.train_fraction < 1.0):
            raise ValueError(f"train_fraction must be in (0, 1) (train_fraction = {self.train_fraction})")
        missing = [name for name in REQUIRED_SEEDS if name not in self.rng_seeds]
        if missing:
            raise ValueError(f"rng_seeds must define {', '.join(missing)}")
        if self.metrics_config.get("ms_ssim_sigma", 1.0) <= 0:
            raise ValueError("metrics_config ms_ssim_sigma must be positive")

    def to_dict(self) -> dict[str, Any]:
        """Return the design as plain JSON-ready data, derived spacing thresholds included."""
        return {
            "dose_list": list(self.dose_list),
            "gridsizes": list(self.gridsizes),
            "neighbor_count": self.neighbor_count,
            "patch_size_pixels": self.patch_size_pixels,
            "overlap_views": dict(self.overlap_views),
            "spacing_thresholds": self.spacing_thresholds,
            "train_test_split_axis": self.train_test_split_axis,
            "train_fraction": self.train_fraction,
            "rng_seeds": dict(self.rng_seeds),
            "metrics_config": dict(self.metrics_config),
        }


def get_study_design() -> StudyDesign:
    """Return the full study design: doses 1e3, 1e4, 1e5; N = 128; dense 0.7 and sparse 0.2."""
    return StudyDesign()


def dose_folder_name(dose_photons: float) -> str:
    """Return the folder name of a dose, `dose_{int(dose)}`, for example `dose_1000`."""
    return f"dose_{int(dose_photons)}"


def dose_label(dose_photons: float) -> str:
    """Return the dose as printed in result lines, `{dose:.0e}`, for example `1e+05`."""
    return f"{dose_photons:.0e}"
