"""Datasets: offline digits and a synthetic teacher-student task; FashionMNIST and CIFAR-10 with pinned hashes.

Every loader returns a :class:`Dataset` of torch tensors with one-hot float targets ``y`` (for the MSE loss
``(1/n) Σ ½||f(x) − y||²`` used throughout the book) and integer ``labels``.

Downloads go through :func:`fetch`, which checks every file's sha256 against ``registry.txt`` before it is used.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import struct
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

OFFLINE_DATASETS = ("digits", "teacher_student")
DOWNLOAD_DATASETS = ("fashion_mnist", "cifar10")
DATASETS = OFFLINE_DATASETS + DOWNLOAD_DATASETS

_REGISTRY_FILE = Path(__file__).with_name("registry.txt")


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
        """A copy with inputs and targets moved to ``device`` / cast to the float ``dtype`` (labels stay int64)."""
        def mv(t, cast):
            return t.to(device=device, dtype=dtype if cast else None)
        return Dataset(self.name, mv(self.x_train, True), mv(self.y_train, True), mv(self.labels_train, False),
                       mv(self.x_test, True), mv(self.y_test, True), mv(self.labels_test, False), self.n_classes,
                       self.input_shape, self.classes, self.meta)

    def __repr__(self) -> str:
        return (f"Dataset({self.name!r}, n_train={self.n_train}, n_test={self.n_test}, input_shape={self.input_shape}, "
                f"n_classes={self.n_classes}, classes={self.classes})")


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
    return x_tr.astype(np.float64) / 255.0, x_te.astype(np.float64) / 255.0, l_tr.astype(np.int64), l_te.astype(np.int64)


def _subsample(labels: np.ndarray, n: int | None, rng: np.random.Generator, which: str) -> np.ndarray:
    """Indices of a class-stratified random subset of size n (all, shuffled, if n is None)."""
    idx = rng.permutation(len(labels))
    if n is None:
        return idx
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"{which} must be a positive integer or None, got {n!r}")
    if n > len(labels):
        raise ValueError(f"{which}={n} is more than the {len(labels)} samples available for these classes; "
                         f"use {which} <= {len(labels)} or None for all")
    # round-robin over classes in shuffled order keeps the class proportions as even as possible
    per_class = [idx[labels[idx] == c] for c in np.unique(labels)]
    order = np.argsort(np.concatenate([np.arange(len(p)) / len(p) for p in per_class]), kind="stable")
    chosen = np.concatenate(per_class)[order][:n]
    return rng.permutation(chosen)


def _teacher_student(n_train, n_test, input_dim, n_outputs, teacher_width, noise, seed, dtype):
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
    - ``n_train`` / ``n_test``: class-stratified random subsets (``None``: all). Digits has 1797 images, split
      80/20 (stratified, by ``seed``) into 1437 train and 360 test.
    - ``standardize``: per-channel z-scoring with the training set's mean and std (images) — applied identically to
      the test set.
    - ``flatten``: return inputs as vectors (n, C*H*W) instead of images (n, C, H, W).
    - Teacher-student only: ``x ~ N(0, I_input_dim)``, ``y = teacher(x) (+ noise·N(0,1) on train)`` with a random
      one-hidden-layer tanh teacher of ``teacher_width`` units (``meta["teacher"]``); its inputs are already
      standardised and are left untouched so that ``y = teacher(x)`` holds exactly.
    - Download datasets are cached under ``root`` (default :func:`default_root`); see :func:`fetch`.
    """
    if name not in DATASETS:
        raise ValueError(f"name must be one of {list(DATASETS)}, got {name!r}")
    if name == "teacher_student":
        if classes is not None:
            raise ValueError("classes is not supported for 'teacher_student' (its targets are real-valued); "
                             "set n_outputs instead")
        for arg, v in (("input_dim", input_dim), ("n_outputs", n_outputs), ("teacher_width", teacher_width)):
            if v < 1:
                raise ValueError(f"{arg} must be >= 1, got {v}")
        return _teacher_student(n_train or 256, n_test or 256, input_dim, n_outputs, teacher_width, noise, seed, dtype)

    if name == "digits":
        x_tr, x_te, l_tr, l_te = _raw_digits(seed)
    elif name == "fashion_mnist":
        x_tr, x_te, l_tr, l_te = _raw_fashion_mnist(root, download)
    else:
        x_tr, x_te, l_tr, l_te = _raw_cifar10(root, download)

    available = tuple(int(c) for c in np.unique(l_tr))
    if classes is None:
        classes = available
    classes = tuple(int(c) for c in classes)
    if len(classes) < 2 or len(set(classes)) != len(classes) or not set(classes) <= set(available):
        raise ValueError(f"classes must be at least 2 distinct labels out of {list(available)} for {name!r}, "
                         f"got {list(classes)}")
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
