"""Where data files live and how missing ones are fetched (DESIGN.md section 6).

Folders searched, in order: the ``data_dir`` argument (CLI ``--data-dir``), the ``MLCANON_DATA``
environment variable, ``~/.cache/mlcanon``. A data set's files sit in ``<folder>/<name>/<official names>``.
An existing file is looked for in *all* folders before anything is downloaded; a download goes into the
first writable folder, streams into a temporary file beside the target (with a tqdm bar), is verified
(md5/sha256 or a caller-supplied check of the decoded content) and only then renamed into place, so a
failed or corrupt download never leaves a partial file behind.

Mirrors: :data:`MIRRORS` maps a data set name to a list of base URLs tried in order; the environment
variable ``MLCANON_MIRROR_<NAME>`` (name upper-cased, ``-`` -> ``_``, e.g. ``MLCANON_MIRROR_FASHION_MNIST``)
replaces that list by one base URL (tests point it at a local HTTP server on 127.0.0.1).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from mlcanon.errors import UserError

#: Base URLs (ending in "/") of the official mirrors, tried in order; a file URL is base + file name.
MIRRORS: dict[str, list[str]] = {
    "mnist": [
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ],
    "fashion-mnist": ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"],
    "cifar10": ["https://www.cs.toronto.edu/~kriz/"],
    "binarized-mnist": ["http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/"],
    "tinyshakespeare": ["https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/"],
}

#: Seconds before a connection attempt gives up.
TIMEOUT = 30.0

_CHUNK = 1 << 20
_verified: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> "algo:hex" already checked


def data_dirs(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Folders searched for data, in order: ``data_dir``, ``$MLCANON_DATA``, ``~/.cache/mlcanon``."""
    cands: list[Path] = []
    if data_dir is not None and str(data_dir) != "":
        cands.append(Path(data_dir).expanduser())
    env = os.environ.get("MLCANON_DATA")
    if env:
        cands.append(Path(env).expanduser())
    cands.append(Path.home() / ".cache" / "mlcanon")
    out: list[Path] = []
    for c in cands:
        c = c.absolute()
        if c not in out:
            out.append(c)
    return out


def find_file(name: str, filename: str, data_dir=None) -> Path | None:
    """Return ``<folder>/<name>/<filename>`` from the first searched folder that has it, else None."""
    for d in data_dirs(data_dir):
        p = d / name / filename
        if p.is_file():
            return p
    return None


def mirrors(name: str) -> list[str]:
    """Base URLs for ``name``: ``$MLCANON_MIRROR_<NAME>`` if set, else :data:`MIRRORS`."""
    env = os.environ.get("MLCANON_MIRROR_" + name.upper().replace("-", "_").replace(":", "_"))
    if env:
        return [env if env.endswith("/") else env + "/"]
    return list(MIRRORS.get(name, []))


def file_hash(path: Path, algo: str) -> str:
    """Hex digest (``algo`` = "md5" or "sha256") of a file, read in chunks."""
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def verify_checksum(path: Path, checksum: str) -> None:
    """Check ``path`` against ``"md5:<hex>"`` / ``"sha256:<hex>"``; UserError naming the fix on mismatch."""
    algo, _, want = checksum.partition(":")
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if _verified.get(key) == checksum:
        return
    got = file_hash(path, algo)
    if got != want:
        raise UserError(
            f"{path} is corrupt: {algo} {got} != expected {want}. Delete the file so it is downloaded "
            f"again, or replace it with the official copy."
        )
    _verified[key] = checksum


def _writable_dir(dirs: list[Path], name: str) -> Path | None:
    """First folder in ``dirs`` where ``<folder>/<name>/`` exists or can be created and is writable."""
    for d in dirs:
        target = d / name
        try:
            target.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(target, os.W_OK):
            return target
    return None


def _download(url: str, dest_dir: Path, filename: str, checksum: str | None,
              check: Callable[[Path], None] | None) -> Path:
    """Stream ``url`` into a temp file in ``dest_dir``, verify it, rename to ``filename``; return the path.

    Raises OSError/HTTPException for network trouble and UserError for a failed verification; in both
    cases the temporary file is deleted.
    """
    from tqdm import tqdm

    fd, tmp_name = tempfile.mkstemp(prefix=f".{filename}.", suffix=".part", dir=dest_dir)
    tmp = Path(tmp_name)
    try:
        algo = checksum.partition(":")[0] if checksum else "sha256"
        h = hashlib.new(algo)
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=TIMEOUT) as resp:
            total = resp.headers.get("Content-Length")
            with tqdm(total=int(total) if total else None, unit="B", unit_scale=True,
                      desc=filename, leave=False, disable=None) as bar:
                for block in iter(lambda: resp.read(_CHUNK), b""):
                    out.write(block)
                    h.update(block)
                    bar.update(len(block))
        if checksum:
            want = checksum.partition(":")[2]
            if h.hexdigest() != want:
                raise UserError(f"checksum mismatch for {url}: {algo} {h.hexdigest()} != expected {want}")
        if check is not None:
            check(tmp)
        final = dest_dir / filename
        os.replace(tmp, final)  # atomic rename: the file appears complete or not at all
        st = final.stat()
        if checksum:
            _verified[(str(final), st.st_size, st.st_mtime_ns)] = checksum
        return final
    finally:
        if tmp.exists():
            tmp.unlink()


def fetch(name: str, filename: str, data_dir=None, checksum: str | None = None,
          check: Callable[[Path], None] | None = None, missing: list[str] | None = None) -> Path:
    """Path of ``<name>/<filename>``: found in any searched folder, else downloaded from the mirrors.

    ``checksum`` (``"md5:<hex>"`` or ``"sha256:<hex>"``) is verified on download and on files found on
    disk; ``check(path)`` is an extra verification run on a download before it is renamed into place
    (it raises UserError on failure). ``missing`` lists every file of the set still absent, for the message.
    """
    found = find_file(name, filename, data_dir)
    if found is not None:
        if checksum:
            verify_checksum(found, checksum)
        return found
    dirs = data_dirs(data_dir)
    searched = ", ".join(str(d / name) for d in dirs)
    names = missing if missing else [filename]
    what = f"file{'s' if len(names) > 1 else ''} {', '.join(names)}"
    how = (f"Put the {what.split(' ')[0]} there yourself, or point the library at a folder DIR holding "
           f"{name}/<files>: pass --data-dir DIR (Python: data_dir=DIR) or set MLCANON_DATA=DIR.")
    existed = {d / name for d in dirs if (d / name).is_dir()}
    dest = _writable_dir(dirs, name)
    if dest is None:
        raise UserError(f"{name}: {what} not found in {searched}, and none of these folders is "
                        f"writable for a download. {how}")
    errors: list[str] = []
    for base in mirrors(name):
        url = base + filename
        try:
            return _download(url, dest, filename, checksum, check)
        except UserError as e:  # a corrupt download: try the next mirror, report if all fail
            errors.append(str(e))
        except (OSError, http.client.HTTPException) as e:  # no network, HTTP error, timeout
            reason = e.reason if isinstance(e, urllib.error.URLError) else e
            errors.append(f"{url}: {reason}")
    if dest not in existed and not any(dest.iterdir()):
        dest.rmdir()  # leave no empty folder behind from a failed download
    tried = "; ".join(errors) if errors else f"no mirror is known for {name!r}"
    raise UserError(f"{name}: {what} not found in {searched}, and the download of {filename} failed "
                    f"({tried}). {how}")


def fetch_all(name: str, checksums: dict[str, str | None], data_dir=None) -> dict[str, Path]:
    """:func:`fetch` each file of ``checksums`` (file name -> checksum); an error names all missing files."""
    missing = [f for f in checksums if find_file(name, f, data_dir) is None]
    return {f: fetch(name, f, data_dir, checksum=c, missing=missing) for f, c in checksums.items()}
