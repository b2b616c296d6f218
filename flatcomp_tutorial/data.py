"""Datasets: offline digits and a synthetic teacher-student task; FashionMNIST and CIFAR-10 with pinned hashes.

Every loader returns a :class:`Dataset` of torch tensors with one-hot float targets ``y`` (for the MSE loss
``(1/n) Σ ½||f(x) − y||²`` used throughout the book) and integer ``labels``.

Downloads go through :func:`fetch`, which checks every file's sha256 against ``registry.txt`` before it is used.

Longer than the usual ~400 lines: the download registry with its hashes, the readers of the two real file
formats and the offline datasets belong together (one concept: where the book's data come from, verified).
"""
from __future__ import annotations

import gzip
import hashlib
import math
import os
import pickle
import struct
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from .checks import check_flag, float_dtype
from .checks import is_integer as _is_int

OFFLINE_DATASETS = ("digits", "teacher_student")
DOWNLOAD_DATASETS = ("fashion_mnist", "cifar10")
DATASETS = OFFLINE_DATASETS + DOWNLOAD_DATASETS

_REGISTRY_FILE = Path(__file__).with_name("registry.txt")

N_CLASSES = {"digits": 10, "fashion_mnist": 10, "cifar10": 10}  # labels 0..n-1 of each classification dataset
# samples per class in the official train / test files of the balanced download datasets (upper bounds for n_train)
_PER_CLASS = {"fashion_mnist": (6000, 1000), "cifar10": (5000, 1000)}
FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
TEACHER_STUDENT_DEFAULT_N = 256  # n_train / n_test of "teacher_student" when None
_TEACHER_ONLY = {"input_dim": 8, "n_outputs": 2, "teacher_width": 16, "noise": 0.0}  # load_dataset's defaults


class DataIntegrityError(ValueError):
    """A cached or downloaded file does not have the sha256 pinned in the registry."""


@dataclass(frozen=True)
class RegistryEntry:
    path: str
    sha256: str
    url: str


def _read_registry(path: Path = _REGISTRY_FILE) -> dict[str, RegistryEntry]:
    entries = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            rel, sha, url = line.split()
            entries[rel] = RegistryEntry(rel, sha, url)
    return entries


REGISTRY: dict[str, RegistryEntry] = _read_registry()


@dataclass(frozen=True)
class Dataset:
    """A train/test split. ``x_*``: (n, *input_shape) float; ``y_*``: (n, n_outputs) float targets (one-hot for
    classification); ``labels_*``: (n,) int64 class indices in 0..n_classes-1."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    labels_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    labels_test: torch.Tensor
    n_classes: int
    input_shape: tuple[int, ...]
    classes: tuple[int, ...] = ()
    meta: dict = field(default_factory=dict, repr=False)

    @property
    def n_train(self) -> int:
        return self.x_train.shape[0]

    @property
    def n_test(self) -> int:
        return self.x_test.shape[0]

    @property
    def n_outputs(self) -> int:
        return self.y_train.shape[1]

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> "Dataset":
        """A copy with inputs and targets moved to ``device`` / cast to the float ``dtype`` (labels stay int64).
        A non-floating ``dtype`` (it would truncate the standardised inputs) raises ``ValueError``."""
        if dtype is not None:
            _check_dtype(dtype)

        def mv(t, cast):
            return t.to(device=device, dtype=dtype if cast else None)
        return Dataset(self.name, mv(self.x_train, True), mv(self.y_train, True), mv(self.labels_train, False),
                       mv(self.x_test, True), mv(self.y_test, True), mv(self.labels_test, False), self.n_classes,
                       self.input_shape, self.classes, self.meta)

    def __repr__(self) -> str:
        return (f"Dataset({self.name!r}, n_train={self.n_train}, n_test={self.n_test}, input_shape={self.input_shape}, "
                f"n_classes={self.n_classes}, classes={self.classes})")


# ----------------------------------------------------------------------------------------------------------------
# Argument checks (all run before anything is loaded or downloaded)
# ----------------------------------------------------------------------------------------------------------------
def _check_count(arg: str, value: Any, optional: bool = False) -> int | None:
    """``value`` as an ``int >= 1`` (``None`` passes when ``optional``); otherwise ValueError naming ``arg``."""
    if value is None and optional:
        return None
    if not _is_int(value) or value < 1:
        what = "a positive integer or None" if optional else ">= 1 (a positive integer)"
        raise ValueError(f"{arg} must be {what}, got {value!r} ({type(value).__name__})")
    return int(value)


def _check_noise(noise: Any) -> float:
    """The label-noise std: a finite real number >= 0 (NaN or a negative value would silently mean no noise)."""
    if isinstance(noise, (bool, np.bool_)) or not isinstance(noise, (int, float, np.integer, np.floating)) \
            or not math.isfinite(noise) or noise < 0:
        raise ValueError(f"noise must be a finite number >= 0 (the std of the label noise), got {noise!r}")
    return float(noise)


def _check_seed(seed: Any) -> int:
    if not _is_int(seed) or not 0 <= seed < 2**32:
        raise ValueError(f"seed must be an integer in [0, 2**32), got {seed!r} ({type(seed).__name__})")
    return int(seed)


def _check_dtype(dtype: Any) -> torch.dtype:
    """One of :data:`FLOAT_DTYPES`, or its name (``"float64"``); an integer dtype would truncate the standardised
    inputs to integers."""
    if isinstance(dtype, str):   # a name, as a stored configuration keeps it: checks.float_dtype resolves it
        try:
            dtype = float_dtype(dtype)
        except ValueError:
            pass                   # refused below, with the list of dtypes
    if not isinstance(dtype, torch.dtype) or dtype not in FLOAT_DTYPES:
        raise ValueError(f"dtype must be a floating torch dtype ({', '.join(map(str, FLOAT_DTYPES))}), got {dtype!r}"
                         "; integer dtypes would truncate the inputs")
    return dtype


def _check_classes(name: str, classes: Any) -> tuple[int, ...] | None:
    """At least 2 distinct integer labels (not bool, not float; numpy integers are fine) in 0..N_CLASSES[name]-1."""
    if classes is None:
        return None
    n = N_CLASSES[name]
    expected = f"classes must be at least 2 distinct labels out of {list(range(n))} for {name!r}"
    if isinstance(classes, (str, bytes)) or not isinstance(classes, Iterable):
        raise ValueError(f"{expected}, given as a list or tuple of integers, got {classes!r}")
    given = list(classes)
    not_int = [c for c in given if not _is_int(c)]
    if not_int:
        raise ValueError(f"{expected}; labels must be integers (not bool or float; convert a tensor with "
                         f".tolist()), got {not_int!r} in {given!r}")
    labels = tuple(int(c) for c in given)
    outside = [c for c in labels if not 0 <= c < n]
    repeated = sorted({c for c in labels if labels.count(c) > 1})
    if len(labels) < 2 or outside or repeated:
        why = (f"{outside} not labels of {name!r}" if outside else f"{repeated} repeated" if repeated
               else f"only {len(labels)} given")
        raise ValueError(f"{expected}, got {list(labels)} ({why})")
    return labels


def _check_arguments(name: Any, classes: Any, n_train: Any, n_test: Any, standardize: Any, flatten: Any, seed: Any,
                     download: Any, dtype: Any, teacher: dict[str, Any]) -> dict[str, Any]:
    """Validate every :func:`load_dataset` argument; returns the normalised values (Python ints/floats/bools)."""
    if not isinstance(name, str) or name not in DATASETS:
        raise ValueError(f"name must be one of {list(DATASETS)}, got {name!r}")
    args = dict(n_train=_check_count("n_train", n_train, optional=True),
                n_test=_check_count("n_test", n_test, optional=True),
                standardize=check_flag(standardize, "standardize"), flatten=check_flag(flatten, "flatten"),
                download=check_flag(download, "download"), seed=_check_seed(seed), dtype=_check_dtype(dtype))
    if name == "teacher_student":
        if classes is not None:
            raise ValueError("classes is not supported for 'teacher_student' (its targets are real-valued); "
                             "set n_outputs instead")
        args.update({k: _check_count(k, teacher[k]) for k in ("input_dim", "n_outputs", "teacher_width")})
        args.update(noise=_check_noise(teacher["noise"]), classes=None)
        return args
    changed = [f"{k}={v!r}" for k, v in teacher.items()
               if type(v) not in (int, float) or v != _TEACHER_ONLY[k]]
    if changed:
        raise ValueError(f"{', '.join(changed)}: these options apply only to name='teacher_student', "
                         f"{name!r} would ignore them; leave them at their defaults")
    args["classes"] = _check_classes(name, classes)
    if name in _PER_CLASS:  # balanced files of known size: a too-large subset is refused before any download
        k = len(args["classes"] or range(N_CLASSES[name]))
        for which, per_class in zip(("n_train", "n_test"), _PER_CLASS[name]):
            if args[which] is not None and args[which] > k * per_class:
                raise ValueError(f"{which}={args[which]} is more than the {k * per_class} samples available for "
                                 f"these classes of {name!r}; use {which} <= {k * per_class} or None for all")
    return args


# ----------------------------------------------------------------------------------------------------------------
# Download cache
# ----------------------------------------------------------------------------------------------------------------
def default_root() -> Path:
    """``$FLATCOMP_DATA`` if set; else the repository's ``data/`` folder when running from a checkout; else the
    user cache (``~/.cache/flatcomp_tutorial``)."""
    if os.environ.get("FLATCOMP_DATA"):
        return Path(os.environ["FLATCOMP_DATA"]).expanduser()
    repo_data = Path(__file__).resolve().parents[1] / "data"
    if (repo_data / "registry.txt").exists():
        return repo_data
    import pooch

    return Path(pooch.os_cache("flatcomp_tutorial"))


def sha256(path: str | Path) -> str:
    """Hex SHA-256 digest of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _offline_help(entry: RegistryEntry, path: Path) -> str:
    return (f"Without network access, download {entry.url} on another machine and place it at {path} "
            f"(sha256 {entry.sha256}). Datasets that need no download: {', '.join(map(repr, OFFLINE_DATASETS))}.")


def fetch(relpath: str, root: str | Path | None = None, download: bool = True) -> Path:
    """Return the local path of registry file ``relpath``, downloading it (with a progress bar) if needed.

    The sha256 is checked on every call, for cached and freshly downloaded files alike: a mismatching file
    raises :class:`DataIntegrityError` and is never parsed.
    """
    if relpath not in REGISTRY:
        raise ValueError(f"relpath {relpath!r} is not in the download registry; known files: {sorted(REGISTRY)}")
    entry = REGISTRY[relpath]
    path = Path(root if root is not None else default_root()) / relpath
    if not path.exists():
        if not download:
            raise FileNotFoundError(f"{relpath} is not in the data cache ({path}) and download=False. "
                                    + _offline_help(entry, path))
        import pooch

        try:
            pooch.retrieve(entry.url, known_hash=f"sha256:{entry.sha256}", fname=path.name, path=path.parent,
                           progressbar=os.environ.get("FLATCOMP_PROGRESS", "1") != "0" and not os.environ.get("CI"))
        except ValueError as err:  # pooch's hash mismatch: the downloaded file was already removed
            raise DataIntegrityError(f"the download of {relpath} from {entry.url} does not have the pinned "
                                     f"sha256 {entry.sha256}: {err}") from err
        except Exception as err:  # network errors of any kind
            raise FileNotFoundError(f"{relpath} is not in the data cache ({path}) and downloading {entry.url} "
                                    f"failed ({type(err).__name__}: {err}). " + _offline_help(entry, path)) from err
    actual = sha256(path)
    if actual != entry.sha256:
        raise DataIntegrityError(
            f"{path} has sha256 {actual}, but the registry pins {entry.sha256}: the file is corrupted, truncated or "
            f"not the official one, and was not used. Delete it and download it again from {entry.url}."
        )
    return path


# ----------------------------------------------------------------------------------------------------------------
# File-format parsers (tested on small files the tests fabricate in the same formats)
# ----------------------------------------------------------------------------------------------------------------
def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) of unsigned bytes, as used by (Fashion-)MNIST."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4:
        raise ValueError(f"{path} is not an IDX file (too short)")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file (magic {raw[:4].hex()})")
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says shape {dims} but the file holds {data.size} values")
    return data.reshape(dims)


def read_cifar10_tarball(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Read the CIFAR-10 python tarball: returns x_train (50000, 3, 32, 32) uint8, labels_train, x_test, labels_test."""
    def load(tar, name):
        member = tar.extractfile(f"cifar-10-batches-py/{name}")
        if member is None:
            raise ValueError(f"{path} has no member cifar-10-batches-py/{name}")
        batch = pickle.load(member, encoding="bytes")  # safe: the file's sha256 was checked by fetch()
        return np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32), np.asarray(batch[b"labels"])

    with tarfile.open(path, "r:gz") as tar:
        names = set(tar.getnames())
        train_names = sorted(n.split("/")[-1] for n in names if n.startswith("cifar-10-batches-py/data_batch_"))
        if not train_names:
            raise ValueError(f"{path} does not look like cifar-10-python.tar.gz (no data_batch_* members)")
        train = [load(tar, n) for n in train_names]
        x_te, l_te = load(tar, "test_batch")
    return np.concatenate([t[0] for t in train]), np.concatenate([t[1] for t in train]), x_te, l_te


# ----------------------------------------------------------------------------------------------------------------
# Raw loaders: (x_train, labels_train, x_test, labels_test) as numpy, images (n, C, H, W) float
# ----------------------------------------------------------------------------------------------------------------
def _raw_digits(seed: int, test_fraction: float = 0.2):
    """The 1797 digits images split into train / test, stratified; ``test_fraction`` in (0, 1)."""
    if isinstance(test_fraction, (bool, np.bool_)) or not isinstance(test_fraction, (float, np.floating)) \
            or not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be a float strictly between 0 and 1, got {test_fraction!r}")
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = d.images.astype(np.float64)[:, None] / 16.0
    return train_test_split(x, d.target, test_size=test_fraction, random_state=seed, stratify=d.target)


def _raw_fashion_mnist(root, download):
    f = {k: fetch(f"fashion_mnist/{k}-idx{3 if 'images' in k else 1}-ubyte.gz", root, download)
         for k in ("train-images", "train-labels", "t10k-images", "t10k-labels")}
    x_tr, x_te = (read_idx(f[k])[:, None].astype(np.float64) / 255.0 for k in ("train-images", "t10k-images"))
    l_tr, l_te = (read_idx(f[k]).astype(np.int64) for k in ("train-labels", "t10k-labels"))
    if len(x_tr) != len(l_tr) or len(x_te) != len(l_te):
        raise ValueError("fashion_mnist: image and label files have different lengths")
    return x_tr, x_te, l_tr, l_te


def _raw_cifar10(root, download):
    x_tr, l_tr, x_te, l_te = read_cifar10_tarball(fetch("cifar10/cifar-10-python.tar.gz", root, download))
    return (x_tr.astype(np.float64) / 255.0, x_te.astype(np.float64) / 255.0, l_tr.astype(np.int64),
            l_te.astype(np.int64))


def _subsample(labels: np.ndarray, n: int | None, rng: np.random.Generator, which: str) -> np.ndarray:
    """Indices of a class-stratified random subset of size n (all, shuffled, if n is None)."""
    idx = rng.permutation(len(labels))
    if n is None:
        return idx
    n = _check_count(which, n, optional=True)
    if n > len(labels):
        raise ValueError(f"{which}={n} is more than the {len(labels)} samples available for these classes; "
                         f"use {which} <= {len(labels)} or None for all")
    # round-robin over classes in shuffled order keeps the class proportions as even as possible
    per_class = [idx[labels[idx] == c] for c in np.unique(labels)]
    order = np.argsort(np.concatenate([np.arange(len(p)) / len(p) for p in per_class]), kind="stable")
    chosen = np.concatenate(per_class)[order][:n]
    return rng.permutation(chosen)


def _teacher_student(n_train: int, n_test: int, input_dim: int, n_outputs: int, teacher_width: int, noise: float,
                     seed: int, dtype: torch.dtype) -> Dataset:
    """``x ~ N(0, I)``, ``y = teacher(x)`` (+ ``noise``·N(0, 1) on the training targets); arguments already checked."""
    from .models import make_model

    g = torch.Generator().manual_seed(seed)
    teacher = make_model("mlp", (input_dim,), n_outputs, width=teacher_width, depth=1, activation="tanh",
                         seed=seed + 1, dtype=torch.float64).eval()
    x_tr = torch.randn(n_train, input_dim, generator=g, dtype=torch.float64)
    x_te = torch.randn(n_test, input_dim, generator=g, dtype=torch.float64)
    with torch.no_grad():
        y_tr, y_te = teacher(x_tr), teacher(x_te)
    if noise > 0:
        y_tr = y_tr + noise * torch.randn(y_tr.shape, generator=g, dtype=torch.float64)
    lab = (lambda y: y.argmax(1)) if n_outputs > 1 else (lambda y: (y[:, 0] > 0).long())
    return Dataset("teacher_student", x_tr.to(dtype), y_tr.to(dtype), lab(y_tr), x_te.to(dtype), y_te.to(dtype),
                   lab(y_te), max(n_outputs, 2), (input_dim,), tuple(range(max(n_outputs, 2))),
                   {"teacher": teacher.to(dtype), "noise": noise, "seed": seed})


def load_dataset(name: str, *, classes: Sequence[int] | None = None, n_train: int | None = None,
                 n_test: int | None = None, standardize: bool = True, flatten: bool = False, seed: int = 0,
                 root: str | Path | None = None, download: bool = True, dtype: torch.dtype = torch.float32,
                 input_dim: int = 8, n_outputs: int = 2, teacher_width: int = 16, noise: float = 0.0) -> Dataset:
    """Load dataset ``name``: ``"digits"``, ``"teacher_student"`` (offline) or ``"fashion_mnist"``, ``"cifar10"``.

    - ``classes``: keep only these original classes, relabelled 0..k-1 in the given order (the paper uses 2-class
      tasks, e.g. ``classes=(0, 1)``).
    - ``n_train`` / ``n_test``: class-stratified random subsets (``None``: all; teacher-student: 256 each). They
      must be positive integers: an empty test set is refused (its accuracy and loss would be NaN), and so are
      ``0``, negative sizes, ``True`` and ``2.5``. Digits has 1797 images, split 80/20 (stratified, by ``seed``)
      into 1437 train and 360 test.
    - ``standardize``: per-channel z-scoring with the training set's mean and std (images) — applied identically to
      the test set.
    - ``flatten``: return inputs as vectors (n, C*H*W) instead of images (n, C, H, W).
    - ``dtype``: a floating dtype for inputs and targets (float32, float64, or float16 / bfloat16, which round the
      inputs to about 3 significant digits); integer dtypes are refused. Labels are always int64.
    - ``seed``: an integer in [0, 2**32) fixing the split, the subsets and the teacher.
    - Teacher-student only (other datasets refuse non-default values): ``x ~ N(0, I_input_dim)``,
      ``y = teacher(x) (+ noise·N(0,1) on train)`` with a random one-hidden-layer tanh teacher of ``teacher_width``
      units (``meta["teacher"]``); its inputs are already standardised and are left untouched so that
      ``y = teacher(x)`` holds exactly. ``input_dim``, ``n_outputs`` and ``teacher_width`` are positive integers,
      ``noise`` a finite number >= 0.
    - Download datasets are cached under ``root`` (default :func:`default_root`); see :func:`fetch`.

    Every argument is checked before anything is loaded or downloaded; a bad one raises ``ValueError`` naming it.
    """
    a = _check_arguments(name, classes, n_train, n_test, standardize, flatten, seed, download, dtype,
                         dict(input_dim=input_dim, n_outputs=n_outputs, teacher_width=teacher_width, noise=noise))
    n_train, n_test, standardize, flatten, seed, download, dtype, classes = (
        a[k] for k in ("n_train", "n_test", "standardize", "flatten", "seed", "download", "dtype", "classes"))
    if name == "teacher_student":
        default = TEACHER_STUDENT_DEFAULT_N
        return _teacher_student(default if n_train is None else n_train, default if n_test is None else n_test,
                                a["input_dim"], a["n_outputs"], a["teacher_width"], a["noise"], seed, dtype)

    if name == "digits":
        x_tr, x_te, l_tr, l_te = _raw_digits(seed)
    elif name == "fashion_mnist":
        x_tr, x_te, l_tr, l_te = _raw_fashion_mnist(root, download)
    else:
        x_tr, x_te, l_tr, l_te = _raw_cifar10(root, download)

    available = tuple(int(c) for c in np.unique(l_tr))
    if classes is None:
        classes = available
    missing = [c for c in classes if c not in available]
    if len(classes) < 2 or missing:  # only for files whose training set lacks some labels
        raise ValueError(f"classes must be at least 2 distinct labels out of {list(available)} (the labels present "
                         f"in {name!r}'s training files), got {list(classes)}")
    relabel = {c: i for i, c in enumerate(classes)}

    rng = np.random.default_rng(seed)
    splits = []
    for x, lab, n, which in ((x_tr, l_tr, n_train, "n_train"), (x_te, l_te, n_test, "n_test")):
        keep = np.flatnonzero(np.isin(lab, classes))
        sel = keep[_subsample(lab[keep], n, rng, which)]
        splits.append((x[sel], np.array([relabel[int(c)] for c in lab[sel]], dtype=np.int64)))
    (x_tr, l_tr), (x_te, l_te) = splits

    if standardize:
        axes = (0, 2, 3)
        mean = x_tr.mean(axis=axes, keepdims=True)
        std = x_tr.std(axis=axes, keepdims=True)
        std[std == 0] = 1.0
        x_tr, x_te = (x_tr - mean) / std, (x_te - mean) / std
    input_shape = tuple(x_tr.shape[1:])
    if flatten:
        x_tr, x_te = x_tr.reshape(len(x_tr), -1), x_te.reshape(len(x_te), -1)
        input_shape = (x_tr.shape[1],)

    k = len(classes)
    eye = torch.eye(k, dtype=dtype)
    l_tr_t, l_te_t = torch.from_numpy(l_tr), torch.from_numpy(l_te)
    return Dataset(name, torch.as_tensor(x_tr, dtype=dtype), eye[l_tr_t], l_tr_t, torch.as_tensor(x_te, dtype=dtype),
                   eye[l_te_t], l_te_t, k, input_shape, classes, {"seed": seed, "standardize": standardize})
