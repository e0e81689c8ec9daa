"""Weight versions on shared storage: the filesystem transport between trainer and generators.

The trainer writes each policy version as a complete Hugging Face directory under
``{weights_dir}/v{version:06d}``: written to a temp dir, hashed, then renamed into place, so a
reader never sees a half-written version. It then announces ``{version, uri, sha256}``: the
announcement is appended to the ``weights`` stream (history) and stored under ``weights:latest``
(what a starting or polling generator reads). Generators check the hash before loading.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from services.common import schemas, streams

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "generation_config.json", "vocab.json", "merges.txt", "chat_template.jinja")
MARKER = "t1_version.json"


def version_dir(weights_dir: Path, version: int) -> Path:
    return Path(weights_dir) / f"v{version:06d}"


def payload_sha256(model_dir: Path) -> str:
    """sha256 over the safetensors files (sorted by name), the bytes a generator loads."""
    h = hashlib.sha256()
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {model_dir}")
    for f in files:
        h.update(f.name.encode())
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def copy_tokenizer_files(src: Path, dst: Path) -> None:
    """Copy the tokenizer verbatim, so every version directory is a complete HF model."""
    for name in TOKENIZER_FILES:
        if (Path(src) / name).exists():
            shutil.copy2(Path(src) / name, Path(dst) / name)


def write_version_files(weights_dir: Path, version: int, save_model, tokenizer_src: Path,
                        keep: int = 3, keep_every: int = 0) -> Path:
    """Write one version atomically, without its digest (``payload_sha256`` of the returned
    directory, which the trainer computes while its checkpoint is saved). ``save_model(path)``
    writes config + safetensors.

    Older versions are pruned to the newest ``keep``, except every ``keep_every``-th (0: none),
    which stay for evaluating the run's checkpoints afterwards."""
    weights_dir = Path(weights_dir)
    weights_dir.mkdir(parents=True, exist_ok=True)
    final = version_dir(weights_dir, version)
    tmp = weights_dir / f".tmp-{final.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    save_model(tmp)
    copy_tokenizer_files(tokenizer_src, tmp)
    (tmp / MARKER).write_text(json.dumps({"version": version}))
    if final.exists():  # a trainer that crashed after the rename re-publishes the same version
        shutil.rmtree(final)
    tmp.rename(final)
    _prune(weights_dir, keep, keep_every)
    return final


def write_version(weights_dir: Path, version: int, save_model, tokenizer_src: Path,
                  keep: int = 3, keep_every: int = 0) -> tuple[Path, str]:
    """``write_version_files`` and the digest, in one call."""
    final = write_version_files(weights_dir, version, save_model, tokenizer_src, keep, keep_every)
    return final, payload_sha256(final)


def _prune(weights_dir: Path, keep: int, keep_every: int = 0) -> None:
    versions = sorted(p for p in weights_dir.glob("v[0-9]*") if p.is_dir())
    for old in versions[:-keep]:
        if keep_every and int(old.name[1:]) % keep_every == 0:
            continue
        shutil.rmtree(old, ignore_errors=True)


def latest_key(s: streams.Streams) -> str:
    return s.key("weights:latest")


def announce(s: streams.Streams, ann: schemas.WeightAnnouncement, pipe=None) -> None:
    own = pipe is None
    pipe = pipe if pipe is not None else s.transaction()
    s.publish(streams.WEIGHTS, ann, pipe)
    pipe.set(latest_key(s), schemas.encode(ann))
    if own:
        pipe.execute()


def latest(s: streams.Streams) -> schemas.WeightAnnouncement | None:
    raw = s.r.get(latest_key(s))
    return None if raw is None else schemas.decode(raw, schemas.WeightAnnouncement)


def verify(ann: schemas.WeightAnnouncement) -> None:
    """Raise if the announced directory is missing or its bytes differ from the announcement."""
    actual = payload_sha256(Path(ann.uri))
    if actual != ann.sha256:
        raise ValueError(f"weights v{ann.version} at {ann.uri}: sha256 {actual[:12]} != announced {ann.sha256[:12]}")
