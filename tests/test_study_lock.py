"""The study lock deletes the temporary files a killed runner left in the root."""

from fly64.atomic import write_bytes
from studies.fly64_dose_overlap.lock import study_lock


def test_lock_removes_stale_temporary(tmp_path):
    stale = tmp_path / "phase_e" / "dose_10000" / "baseline" / "gs1" / ".wts.h5.zip.k3j9x_2a.tmp"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"partial bundle")
    with study_lock(tmp_path):
        assert not stale.exists()


def test_lock_keeps_artifacts(tmp_path):
    artifact = tmp_path / "phase_e" / "training_manifest.json"
    write_bytes(artifact, b"{}")
    with study_lock(tmp_path):
        assert artifact.read_bytes() == b"{}"
