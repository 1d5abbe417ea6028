"""Study configuration files (TOML): schema, defaults and validation.

A config has up to six tables, each optional, each rejecting unknown keys:

- `[study]`: the design constants (`StudyDesign`), with `[study.overlap_views]`,
  `[study.rng_seeds]` and `[study.metrics_config]`;
- `[simulation]`: object size, scan pattern and step, chunking;
- `[overlap]`: the rule that turns a view's target overlap into a spacing (Phase D);
- `[training]`: backend, model preset, epochs, batch size, learning rate and stopping;
- `[reconstruction]`: inference batch size and the classical reference's settings;
- `[report]`: figure settings.

Omitted keys take the defaults below, which describe the full study at N = 128.
"""

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field

from fly64.errors import InputError
from studies.fly64_dose_overlap.design import StudyDesign

BACKENDS = ("pytorch", "tensorflow")


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StudyTable(_Table):
    """Design constants; see `StudyDesign` for their meaning."""

    dose_list: list[float] = [1e3, 1e4, 1e5]
    gridsizes: list[int] = [1, 2]
    neighbor_count: int = 7
    patch_size_pixels: int = 128
    overlap_views: dict[str, float] = {"dense": 0.7, "sparse": 0.2}
    train_test_split_axis: Literal["y", "x"] = "y"
    train_fraction: float = 0.8
    rng_seeds: dict[str, int] = {"simulation": 42, "grouping": 123, "subsampling": 456}
    metrics_config: dict[str, Any] = {"ms_ssim_sigma": 1.0, "emphasise_phase": True, "report_amplitude": True}


class SimulationTable(_Table):
    """Phase C simulation settings: object, scan trajectory and chunking."""

    object_size_px: int = Field(1024, ge=16, description="side M of the square object, in pixels")
    scan_pattern: Literal["raster", "spiral"] = Field("raster", description="scan trajectory")
    scan_step_px: float = Field(16.0, gt=0, description="raster step or spiral spacing, in pixels")
    jitter_px: float = Field(1.0, ge=0, description="uniform random jitter added to raster positions, in pixels")
    margin_px: float = Field(2.0, ge=0, description="distance kept between patches and the object edge, in pixels")
    chunk_patterns: int = Field(256, ge=1, description="patterns simulated per chunk; bounds memory, fixes the noise streams")
    workers: int = Field(0, ge=0, description="threads for simulation; 0 uses every available core")


class OverlapTable(_Table):
    """Phase D settings: how a view's target overlap fraction f becomes a spacing between positions.

    - `patch_size`: `(1 - f) * N`, the design's spacing thresholds. Their footprints only
      overlap by about f when the probe fills the N x N window.
    - `probe_overlap`: the distance at which two discs of the measured probe diameter
      overlap by f (`fly64.physics.overlap.spacing_for_overlap_px`).
    """

    spacing_rule: Literal["patch_size", "probe_overlap"] = Field(
        "patch_size", description="`patch_size`: (1 - f) * N; `probe_overlap`: the disc distance of overlap f"
    )


class TrainingTable(_Table):
    """Phase E training settings of every job."""

    backend: Literal["pytorch", "tensorflow"] = "pytorch"
    model_preset: Literal["compact", "reference"] = "compact"
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(16, ge=1)
    learning_rate: float = Field(1e-3, gt=0)
    validation_fraction: float = Field(0.1, ge=0, lt=1)
    early_stopping_patience: int = Field(5, ge=1, description="epochs without validation improvement before stopping")
    max_train_groups: int = Field(0, ge=0, description="cap on training groups per job; 0 keeps all")
    threads: int = Field(
        0, ge=0, description="CPU threads per training job, Phase F inference and pty-chi run; 0 lets the backend choose"
    )
    device: Literal["auto", "cpu", "gpu"] = "auto"


class ReconstructionTable(_Table):
    """Phase F reconstruction settings: inference batches and the classical reference."""

    batch_size: int = Field(64, ge=1, description="patterns per inference batch")
    ptychi_epochs: int = Field(50, ge=1, description="LSQML epochs of the classical reference")
    ptychi_batch_size: int = Field(32, ge=1)
    ptychi_max_patterns: int = Field(0, ge=0, description="cap on patterns for the classical reference; 0 keeps all")


class ReportTable(_Table):
    """Report figure settings."""

    dpi: int = Field(110, ge=30, le=600)


class StudyConfig(_Table):
    """A whole study configuration."""

    study: StudyTable = StudyTable()
    simulation: SimulationTable = SimulationTable()
    overlap: OverlapTable = OverlapTable()
    training: TrainingTable = TrainingTable()
    reconstruction: ReconstructionTable = ReconstructionTable()
    report: ReportTable = ReportTable()

    def design(self) -> StudyDesign:
        """Return the validated `StudyDesign` of the `[study]` table."""
        return StudyDesign(**self.study.model_dump())


def default_config() -> StudyConfig:
    """Return the full study configuration (N = 128, three doses, dense and sparse views)."""
    return StudyConfig()


def load_config(path: str | os.PathLike | None) -> StudyConfig:
    """Read, validate and return a study config; `None` returns the defaults.

    Raises:
        InputError: the file is missing, not TOML, has an unknown key or an invalid value.
            The message names the file and the key.
    """
    if path is None:
        return default_config()
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            document = tomllib.load(handle)
    except FileNotFoundError:
        raise InputError(f"{path}: config file not found") from None
    except OSError as error:
        raise InputError(f"{path}: cannot read config file ({error.strerror})") from None
    except tomllib.TOMLDecodeError as error:
        raise InputError(f"{path}: not valid TOML ({error})") from None
    return parse_config(document, source=str(path))


def parse_config(document: dict[str, Any], source: str) -> StudyConfig:
    """Validate a parsed TOML document; errors name `source` and the first offending key."""
    try:
        config = StudyConfig.model_validate(document)
    except pydantic.ValidationError as error:
        first = error.errors()[0]
        key = ".".join(str(part) for part in first["loc"])
        if first["type"] == "extra_forbidden":
            raise InputError(f"{source}: unknown key {key}") from None
        raise InputError(f"{source}: key {key}: {first['msg']} (got {first.get('input')!r})") from None
    try:
        config.design()
    except ValueError as error:
        raise InputError(f"{source}: [study] {error}") from None
    return config
