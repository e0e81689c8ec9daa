"""Which published weight versions survive pruning (services/common/weights.py)."""

from services.common import weights
from services.common.schemas import WeightAnnouncement


def publish(weights_dir, version, tmp_src, **kw):
    def save(path):
        path.mkdir(parents=True)
        (path / "model.safetensors").write_bytes(f"weights of v{version}".encode())
    return weights.write_version(weights_dir, version, save, tmp_src, **kw)


def versions(weights_dir):
    return sorted(int(p.name[1:]) for p in weights_dir.glob("v[0-9]*"))


def test_the_newest_three_versions_stay_by_default(tmp_path):
    for v in range(1, 8):
        publish(tmp_path / "w", v, tmp_path)
    assert versions(tmp_path / "w") == [5, 6, 7]


def test_every_nth_version_is_kept_for_later_evaluation(tmp_path):
    published = {}
    for v in range(1, 26):
        published[v] = publish(tmp_path / "w", v, tmp_path, keep_every=10)
    assert versions(tmp_path / "w") == [10, 20, 23, 24, 25]
    # a kept milestone is still the complete version that was announced
    path, digest = published[10]
    weights.verify(WeightAnnouncement(version=10, uri=str(path), sha256=digest, step=10))
    assert (path / "model.safetensors").read_bytes() == b"weights of v10"
