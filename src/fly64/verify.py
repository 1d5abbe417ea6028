"""Integrity checks of artifacts: model bundles, NPZ files and whole study roots.

A bundle passes when its ZIP is intact, its manifest and params have the required keys,
its SHA-256 and size equal those recorded for it (a job's `result.json` beside it, or an
entry of a training manifest), and, in a fresh process, its model reproduces the
prediction stored with it on one batch. An NPZ passes when it loads without pickle and,
if it is a dataset, meets the data contract.

Each check returns `Finding`s; nothing here raises for a bad artifact.
"""

import dataclasses
import json
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Iterable

import numpy as np

from fly64.atomic import sha256_file
from fly64.bundle.archive import read_bundle
from fly64.contract import KEY_DIFFRACTION, KEY_DIFFRACTION_LEGACY, load_dataset
from fly64.errors import BundleError, DataContractError

BUNDLE_SUFFIX = ".zip"
RELOAD_TIMEOUT_S = 600
# The reload check runs in a fresh interpreter, so nothing cached in this process helps.
RELOAD_SCRIPT = """
import json, sys
from fly64.backends import load_bundle
model = load_bundle(sys.argv[1], verify=False)
print(json.dumps({"deviation": model.verify()}))
"""


@dataclasses.dataclass(frozen=True)
class Finding:
    path: Path
    passed: bool
    message: str

    def line(self) -> str:
        return f"{'PASS' if self.passed else 'FAIL'} {self.path}: {self.message}"


def verify_paths(paths: Iterable[Path], reload: bool = True) -> list[Finding]:
    """Check each path: a bundle (`*.zip`), an NPZ file, or a study root (a folder)."""
    findings: list[Finding] = []
    for path in paths:
        path = Path(path)
        if path.is_dir():
            findings += verify_study_root(path, reload=reload)
        elif not path.exists():
            findings.append(Finding(path, False, "not found"))
        elif path.suffix == ".npz":
            findings.append(verify_npz(path))
        elif path.suffix == BUNDLE_SUFFIX:
            findings += verify_bundle(path, reload=reload)
        else:
            findings.append(Finding(path, False, "unknown artifact kind; expected a bundle (.zip), an .npz file or a study root"))
    return findings


def verify_bundle(
    path: Path,
    expected_sha256: str | None = None,
    expected_size: int | None = None,
    reload: bool = True,
) -> list[Finding]:
    """Check one bundle; the expected digest comes from the arguments or the `result.json` beside it."""
    path = Path(path)
    findings: list[Finding] = []
    try:
        contents = read_bundle(path)
    except BundleError as error:
        return [Finding(path, False, f"rejected: {error}")]
    findings.append(
        Finding(path, True, f"ZIP intact; manifest version {contents.manifest.get('version')}, backend {contents.backend}, "
                            f"models {', '.join(contents.manifest.get('models', []))}")
    )

    if expected_sha256 is None:
        recorded = _recorded_digest(path)
        if recorded is not None:
            expected_sha256, expected_size = recorded
    if expected_sha256 is None:
        findings.append(Finding(path, True, "no recorded SHA-256 to compare (no result.json or manifest entry)"))
    else:
        actual_sha256 = sha256_file(path)
        actual_size = path.stat().st_size
        if actual_sha256 != expected_sha256:
            findings.append(Finding(path, False, f"SHA-256 {actual_sha256} differs from the recorded {expected_sha256}"))
        elif expected_size is not None and actual_size != expected_size:
            findings.append(Finding(path, False, f"size {actual_size} bytes differs from the recorded {expected_size}"))
        else:
            findings.append(Finding(path, True, f"SHA-256 and size ({actual_size} bytes) match the record"))

    if reload:
        findings.append(_reload_in_fresh_process(path))
    return findings


def _recorded_digest(bundle: Path) -> tuple[str, int | None] | None:
    result_path = bundle.parent / "result.json"
    if not result_path.is_file():
        return None
    try:
        result = json.loads(result_path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if result.get("bundle_sha256") is None:
        return None
    return result["bundle_sha256"], result.get("bundle_size_bytes")


def _reload_in_fresh_process(path: Path) -> Finding:
    try:
        completed = subprocess.run(
            [sys.executable, "-c", RELOAD_SCRIPT, str(path)],
            capture_output=True, text=True, timeout=RELOAD_TIMEOUT_S, stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        return Finding(path, False, f"reload timed out after {RELOAD_TIMEOUT_S} s")
    if completed.returncode != 0:
        last = [line for line in completed.stderr.strip().splitlines() if line.strip()]
        return Finding(path, False, f"reload failed: {last[-1] if last else 'exit code ' + str(completed.returncode)}")
    try:
        deviation = json.loads(completed.stdout.strip().splitlines()[-1])["deviation"]
    except (IndexError, KeyError, json.JSONDecodeError):
        return Finding(path, False, "reload printed no deviation")
    return Finding(path, True, f"reloaded in a fresh process; stored prediction reproduced within {deviation:.2g}")


def verify_npz(path: Path) -> Finding:
    """Check that an NPZ loads without pickle; a dataset must also meet the data contract."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            keys = set(archive.files)
            for key in keys:
                archive[key]
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        return Finding(path, False, f"does not load with allow_pickle=False ({error})")
    if KEY_DIFFRACTION in keys or KEY_DIFFRACTION_LEGACY in keys:
        try:
            dataset = load_dataset(path)
        except DataContractError as error:
            return Finding(path, False, f"breaks the data contract: {error}")
        return Finding(path, True, f"dataset of {dataset.n_patterns} patterns meets the data contract")
    return Finding(path, True, f"loads without pickle ({', '.join(sorted(keys))})")


def verify_study_root(root: Path, reload: bool = True) -> list[Finding]:
    """Check every NPZ under `root` and every bundle of its training manifest."""
    root = Path(root)
    findings = [verify_npz(path) for path in sorted(root.rglob("*.npz"))]
    manifest_path = root / "phase_e" / "training_manifest.json"
    if not manifest_path.is_file():
        manifest_path = root / "training_manifest.json"
    if manifest_path.is_file():
        findings += _verify_manifest_bundles(manifest_path, reload)
    elif not findings:
        findings.append(Finding(root, False, "no NPZ file and no training_manifest.json found"))
    return findings


def _verify_manifest_bundles(manifest_path: Path, reload: bool) -> list[Finding]:
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        return [Finding(manifest_path, False, f"unreadable training manifest ({error})")]
    findings: list[Finding] = []
    for job in manifest.get("jobs", []):
        result = job.get("result", {})
        if result.get("status") != "completed":
            continue
        bundle = Path(job["log_path"]).parent / result.get("bundle_path", "wts.h5.zip")
        if not bundle.is_file():
            findings.append(Finding(bundle, False, "bundle listed in the training manifest is missing"))
            continue
        findings += verify_bundle(bundle, result.get("bundle_sha256"), result.get("bundle_size_bytes"), reload)
    return findings
