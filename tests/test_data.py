"""Datasets: shapes, targets, subsets, standardisation, determinism, the download cache and its hash checks.

FashionMNIST and CIFAR-10 are parsed from small files fabricated here in the real formats (IDX gz, python pickle
tarball); the registry is pointed at them with their true sha256.
"""
import gzip
import io
import pickle
import struct
import tarfile

import numpy as np
import pytest
import torch

import flatcomp_tutorial as fc
from flatcomp_tutorial import data as D


# ---------------------------------------------------------------------------------------------------- digits
def test_digits_default_split_has_all_1797_images_with_one_hot_targets():
    d = fc.load_dataset("digits")
    assert d.n_train + d.n_test == 1797
    assert d.x_train.shape == (d.n_train, 1, 8, 8) and d.input_shape == (1, 8, 8)
    assert d.n_classes == 10 and d.y_train.shape == (d.n_train, 10)
    assert torch.equal(d.y_train.argmax(1), d.labels_train)
    assert torch.equal(d.y_train.sum(1), torch.ones(d.n_train))


def test_digits_flatten_gives_64_features():
    d = fc.load_dataset("digits", flatten=True)
    assert d.x_train.shape[1:] == (64,) and d.input_shape == (64,)


def test_standardisation_uses_training_statistics():
    d = fc.load_dataset("digits")
    assert abs(d.x_train.mean().item()) < 1e-5
    assert abs(d.x_train.std().item() - 1) < 1e-3
    raw = fc.load_dataset("digits", standardize=False)
    assert raw.x_train.min() >= 0 and raw.x_train.max() <= 1


def test_class_subset_is_relabelled_in_given_order():
    d = fc.load_dataset("digits", classes=(7, 3))
    assert d.n_classes == 2 and d.classes == (7, 3) and d.y_train.shape[1] == 2
    raw = fc.load_dataset("digits", standardize=False, flatten=True)
    sub = fc.load_dataset("digits", classes=(7, 3), standardize=False, flatten=True)
    # every relabelled sample is one of the original 7s (label 0) or 3s (label 1)
    sevens = {tuple(v) for v in raw.x_train[raw.labels_train == 7].tolist()}
    assert all(tuple(v) in sevens for v in sub.x_train[sub.labels_train == 0].tolist())


def test_n_train_and_n_test_subsample_with_balanced_classes():
    d = fc.load_dataset("digits", classes=(0, 1), n_train=50, n_test=20)
    assert d.n_train == 50 and d.n_test == 20
    assert abs(d.labels_train.float().mean().item() - 0.5) <= 0.05


def test_same_seed_same_data_other_seed_other_split():
    a, b, c = (fc.load_dataset("digits", n_train=100, seed=s) for s in (0, 0, 1))
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.labels_train, b.labels_train)
    assert not torch.equal(a.x_train, c.x_train)


def test_dataset_to_casts_inputs_but_keeps_integer_labels():
    d = fc.load_dataset("digits", n_train=10, n_test=10).to(dtype=torch.float64)
    assert d.x_train.dtype == torch.float64 and d.y_test.dtype == torch.float64
    assert d.labels_train.dtype == torch.int64


@pytest.mark.parametrize("kwargs, match", [
    (dict(name="mnist"), "name must be one of"),
    (dict(name="digits", classes=(3,)), "classes must be at least 2 distinct"),
    (dict(name="digits", classes=(3, 3)), "classes must be at least 2 distinct"),
    (dict(name="digits", classes=(0, 10)), r"out of \[0, 1"),
    (dict(name="digits", n_train=100000), "n_train=100000 is more than"),
    (dict(name="digits", n_test=0), "n_test must be a positive integer"),
    (dict(name="teacher_student", classes=(0, 1)), "classes is not supported"),
    (dict(name="teacher_student", input_dim=0), "input_dim must be >= 1"),
])
def test_bad_arguments_raise_value_errors_naming_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fc.load_dataset(**kwargs)


# ------------------------------------------------------------------------------------------- argument checks
@pytest.fixture
def no_loading(monkeypatch):
    """Make every loader fail loudly: a test using this fixture proves its error comes before any loading."""
    def boom(*args, **kwargs):
        raise AssertionError("data was loaded (or a download started) before the arguments were checked")
    for fn in ("_raw_digits", "_raw_fashion_mnist", "_raw_cifar10", "_teacher_student", "fetch"):
        monkeypatch.setattr(D, fn, boom)


def test_teacher_student_refuses_zero_n_train(no_loading):
    with pytest.raises(ValueError, match=r"n_train must be a positive integer or None, got 0"):
        fc.load_dataset("teacher_student", n_train=0)


def test_teacher_student_refuses_zero_n_test_instead_of_an_empty_test_set(no_loading):
    with pytest.raises(ValueError, match=r"n_test must be a positive integer or None, got 0"):
        fc.load_dataset("teacher_student", n_test=0)


def test_teacher_student_sizes_default_to_256_each():
    d = fc.load_dataset("teacher_student")
    assert d.n_train == D.TEACHER_STUDENT_DEFAULT_N == 256 and d.n_test == 256


@pytest.mark.parametrize("name, arg", [("teacher_student", "n_train"), ("teacher_student", "n_test"),
                                       ("teacher_student", "input_dim"), ("teacher_student", "n_outputs"),
                                       ("teacher_student", "teacher_width"), ("digits", "n_train"),
                                       ("digits", "n_test"), ("fashion_mnist", "n_train")])
def test_negative_sizes_are_refused_naming_the_argument(no_loading, name, arg):
    with pytest.raises(ValueError, match=rf"^{arg} must be .*got -3"):
        fc.load_dataset(name, **{arg: -3})


@pytest.mark.parametrize("arg", ["n_train", "n_test", "input_dim", "n_outputs", "teacher_width"])
def test_booleans_are_not_sizes(no_loading, arg):
    with pytest.raises(ValueError, match=rf"^{arg} must be .*got True \(bool\)"):
        fc.load_dataset("teacher_student", **{arg: True})


@pytest.mark.parametrize("arg", ["n_train", "n_test", "input_dim", "n_outputs", "teacher_width"])
def test_non_integer_sizes_are_refused(no_loading, arg):
    with pytest.raises(ValueError, match=rf"^{arg} must be .*got 2.5 \(float\)"):
        fc.load_dataset("teacher_student", **{arg: 2.5})


def test_numpy_integer_sizes_are_accepted():
    d = fc.load_dataset("teacher_student", n_train=np.int64(12), n_test=np.int32(5), input_dim=np.int64(3))
    assert d.n_train == 12 and d.n_test == 5 and d.input_shape == (3,)


@pytest.mark.parametrize("noise", [-1, -0.1, float("nan"), float("inf"), True, "0.1"])
def test_teacher_student_refuses_noise_that_is_not_a_finite_non_negative_number(no_loading, noise):
    with pytest.raises(ValueError, match="noise must be a finite number >= 0"):
        fc.load_dataset("teacher_student", noise=noise)


def test_teacher_student_accepts_integer_zero_noise():
    d = fc.load_dataset("teacher_student", n_train=8, n_test=4, noise=0, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(d.meta["teacher"](d.x_train), d.y_train, rtol=1e-12, atol=1e-12)


def test_classes_refuse_booleans(no_loading):
    with pytest.raises(ValueError, match=r"labels must be integers .*\[True\]"):
        fc.load_dataset("digits", classes=[True, 8])


def test_classes_refuse_floats(no_loading):
    with pytest.raises(ValueError, match=r"labels must be integers .*\[3.7\]"):
        fc.load_dataset("digits", classes=[3.7, 8])


def test_classes_refuse_a_string(no_loading):
    with pytest.raises(ValueError, match="given as a list or tuple of integers"):
        fc.load_dataset("digits", classes="38")


@pytest.mark.parametrize("classes, why", [((3,), r"only 1 given"), ((), r"only 0 given"),
                                          ((3, 8, 3), r"\[3\] repeated"), ((-1, 2), r"\[-1\] not labels"),
                                          ((0, 10), r"\[10\] not labels")])
def test_classes_must_be_two_or_more_distinct_labels_in_range(no_loading, classes, why):
    with pytest.raises(ValueError, match=rf"classes must be at least 2 distinct labels out of \[0, 1, .*{why}"):
        fc.load_dataset("digits", classes=classes)


def test_classes_out_of_range_are_refused_before_any_download(no_loading, tmp_path):
    with pytest.raises(ValueError, match=r"\[10\] not labels of 'cifar10'"):
        fc.load_dataset("cifar10", classes=(0, 10), root=tmp_path, download=True)


def test_classes_accept_numpy_integers():
    d = fc.load_dataset("digits", classes=np.array([7, 3]), n_train=20, n_test=10)
    assert d.classes == (7, 3) and all(type(c) is int for c in d.classes)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.bool, torch.complex64, "int64",
                                   "long", "float128", np.float32])
def test_non_floating_dtypes_are_refused(no_loading, dtype):
    with pytest.raises(ValueError, match="dtype must be a floating torch dtype"):
        fc.load_dataset("digits", dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_floating_dtypes_are_accepted_and_labels_stay_int64(dtype):
    d = fc.load_dataset("digits", classes=(0, 1), n_train=20, n_test=10, dtype=dtype)
    assert d.x_train.dtype == d.y_test.dtype == dtype and d.labels_train.dtype == torch.int64


@pytest.mark.parametrize("name", ["float64", "torch.float64"])
def test_a_floating_dtype_may_be_given_by_name_as_a_stored_configuration_keeps_it(name):
    d = fc.load_dataset("digits", classes=(0, 1), n_train=20, n_test=10, dtype=name)
    assert d.x_train.dtype == torch.float64


def test_dataset_to_refuses_an_integer_dtype():
    d = fc.load_dataset("teacher_student", n_train=4, n_test=4)
    with pytest.raises(ValueError, match="dtype must be a floating torch dtype"):
        d.to(dtype=torch.int64)


@pytest.mark.parametrize("kwargs", [dict(noise=0.1), dict(input_dim=5), dict(n_outputs=3), dict(teacher_width=4)])
def test_teacher_student_options_are_refused_for_other_datasets(no_loading, kwargs):
    (arg, value), = kwargs.items()
    with pytest.raises(ValueError, match=rf"{arg}={value!r}: these options apply only to name='teacher_student'"):
        fc.load_dataset("digits", **kwargs)


@pytest.mark.parametrize("arg", ["standardize", "flatten", "download"])
def test_flags_must_be_booleans(no_loading, arg):
    with pytest.raises(ValueError, match=rf"{arg} must be True or False, got 'no'"):
        fc.load_dataset("digits", **{arg: "no"})


@pytest.mark.parametrize("seed", [-1, 2**32, 1.5, True])
def test_seed_must_be_an_integer_in_the_range_every_generator_accepts(no_loading, seed):
    with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2\*\*32\)"):
        fc.load_dataset("digits", seed=seed)


def test_name_must_be_a_known_dataset_string(no_loading):
    with pytest.raises(ValueError, match="name must be one of"):
        fc.load_dataset(["digits"])


def test_too_large_subset_of_a_download_dataset_is_refused_before_downloading(no_loading, tmp_path):
    with pytest.raises(ValueError, match=r"n_train=20000 is more than the 12000 samples available"):
        fc.load_dataset("fashion_mnist", classes=(0, 1), n_train=20000, root=tmp_path)


@pytest.mark.parametrize("fraction", [0.0, 1.0, 1.5, True])
def test_digits_test_fraction_must_lie_strictly_between_zero_and_one(fraction):
    with pytest.raises(ValueError, match="test_fraction must be a float strictly between 0 and 1"):
        D._raw_digits(0, test_fraction=fraction)


def test_subsample_refuses_a_boolean_size():
    with pytest.raises(ValueError, match="n_train must be a positive integer or None, got True"):
        D._subsample(np.arange(10) % 2, True, np.random.default_rng(0), "n_train")


# ---------------------------------------------------------------------------------------------- teacher-student
def test_teacher_student_targets_are_the_teachers_outputs():
    d = fc.load_dataset("teacher_student", n_train=64, n_test=32, input_dim=5, n_outputs=3, dtype=torch.float64)
    teacher = d.meta["teacher"]
    with torch.no_grad():
        assert torch.allclose(teacher(d.x_train), d.y_train, atol=1e-12)
        assert torch.allclose(teacher(d.x_test), d.y_test, atol=1e-12)
    assert d.x_train.shape == (64, 5) and d.y_train.shape == (64, 3)
    assert torch.equal(d.labels_train, d.y_train.argmax(1))


def test_teacher_student_label_noise_only_on_training_targets():
    d = fc.load_dataset("teacher_student", n_train=64, n_test=32, noise=0.1, dtype=torch.float64)
    with torch.no_grad():
        residual = d.y_train - d.meta["teacher"](d.x_train)
        assert 0.05 < residual.std().item() < 0.2
        assert torch.allclose(d.meta["teacher"](d.x_test), d.y_test, atol=1e-12)


# ---------------------------------------------------------------------------------------- download-based data
def _idx_bytes(arr: np.ndarray) -> bytes:
    header = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return gzip.compress(header + arr.astype(np.uint8).tobytes())


def fashion_files(x_train: np.ndarray, labels_train, x_test: np.ndarray, labels_test) -> dict[str, bytes]:
    """FashionMNIST's four registry files in the real IDX gz format, holding these (n, 28, 28) images and labels."""
    return {"fashion_mnist/train-images-idx3-ubyte.gz": _idx_bytes(x_train),
            "fashion_mnist/train-labels-idx1-ubyte.gz": _idx_bytes(np.asarray(labels_train)),
            "fashion_mnist/t10k-images-idx3-ubyte.gz": _idx_bytes(x_test),
            "fashion_mnist/t10k-labels-idx1-ubyte.gz": _idx_bytes(np.asarray(labels_test))}


def cifar10_tarball(batches: dict) -> bytes:
    """The CIFAR-10 python tarball (``cifar-10-batches-py/<name>`` pickles of ``{b"data", b"labels"}``) holding
    ``batches``: ``{"data_batch_1": (x, labels), ..., "test_batch": (x, labels)}``, x of shape (n, 3072) uint8."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, (x, labels) in batches.items():
            blob = pickle.dumps({b"data": np.asarray(x, dtype=np.uint8), b"labels": list(labels)})
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return buf.getvalue()


def write_files(root, files: dict) -> dict[str, str]:
    """Write fabricated registry files under ``root``; returns ``{path under root: sha256}``."""
    hashes = {}
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        hashes[rel] = D.sha256(path)
    return hashes


def _register(monkeypatch, root, files: dict):
    """Write fabricated files under root and point the registry at them with their true hashes."""
    for rel, sha in write_files(root, files).items():
        monkeypatch.setitem(D.REGISTRY, rel, D.RegistryEntry(rel, sha, "http://127.0.0.1:9/" + rel))


@pytest.fixture
def fake_fashion(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    x_tr, x_te = rng.integers(0, 256, (30, 28, 28)), rng.integers(0, 256, (12, 28, 28))
    l_tr, l_te = np.arange(30) % 10, np.arange(12) % 10
    _register(monkeypatch, tmp_path, fashion_files(x_tr, l_tr, x_te, l_te))
    return tmp_path, x_tr, l_tr


def test_fashion_mnist_parses_idx_files(fake_fashion):
    root, x_tr, l_tr = fake_fashion
    d = fc.load_dataset("fashion_mnist", root=root, standardize=False, download=False)
    assert d.x_train.shape == (30, 1, 28, 28) and d.n_test == 12 and d.n_classes == 10
    # the loader shuffles: compare as multisets of (image, label)
    got = sorted((int(l), round(float(x.sum()) * 255)) for x, l in zip(d.x_train, d.labels_train))
    want = sorted((int(l), int(x.sum())) for x, l in zip(x_tr, l_tr))
    assert got == want


def test_fashion_mnist_two_class_task(fake_fashion):
    root, *_ = fake_fashion
    d = fc.load_dataset("fashion_mnist", root=root, classes=(0, 1), download=False)
    assert d.n_classes == 2 and d.n_train == 6 and set(d.labels_train.tolist()) == {0, 1}


def test_cifar10_parses_python_tarball(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    batches = {name: (rng.integers(0, 256, (10, 3072)).astype(np.uint8), list(rng.integers(0, 10, 10)))
               for name in ["data_batch_1", "data_batch_2", "test_batch"]}
    _register(monkeypatch, tmp_path, {"cifar10/cifar-10-python.tar.gz": cifar10_tarball(batches)})
    x_tr, l_tr, x_te, l_te = D.read_cifar10_tarball(tmp_path / "cifar10/cifar-10-python.tar.gz")
    assert x_tr.shape == (20, 3, 32, 32) and x_te.shape == (10, 3, 32, 32)
    assert np.array_equal(x_tr[0].reshape(-1), batches["data_batch_1"][0][0])
    assert list(l_te) == batches["test_batch"][1]
    d = fc.load_dataset("cifar10", root=tmp_path, download=False)
    assert d.input_shape == (3, 32, 32) and d.n_train == 20 and d.x_train.shape == (20, 3, 32, 32)


def test_corrupted_cached_file_fails_the_hash_check_and_is_not_used(fake_fashion):
    root, *_ = fake_fashion
    path = root / "fashion_mnist/train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-3] + b"xyz")
    with pytest.raises(D.DataIntegrityError, match="sha256"):
        fc.load_dataset("fashion_mnist", root=root, download=False)


def test_missing_file_with_download_off_names_file_location_and_offline_datasets(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        fc.load_dataset("fashion_mnist", root=tmp_path, download=False)
    msg = str(err.value)
    assert "train-images-idx3-ubyte.gz" in msg and str(tmp_path) in msg and "'digits'" in msg


def test_unreachable_download_gives_a_clear_offline_error(tmp_path, monkeypatch):
    rel = "cifar10/cifar-10-python.tar.gz"
    monkeypatch.setitem(D.REGISTRY, rel, D.RegistryEntry(rel, "0" * 64, "http://127.0.0.1:9/cifar-10-python.tar.gz"))
    with pytest.raises(FileNotFoundError, match="place it at"):
        fc.load_dataset("cifar10", root=tmp_path, download=True)
    assert not (tmp_path / rel).exists()


def test_idx_reader_rejects_inconsistent_headers(tmp_path):
    bad = tmp_path / "bad.gz"
    bad.write_bytes(gzip.compress(struct.pack(">HBB", 0, 0x08, 1) + struct.pack(">I", 5) + b"abc"))
    with pytest.raises(ValueError, match="header says shape"):
        D.read_idx(bad)


def test_registry_pins_sha256_for_every_download():
    assert {e.path for e in D.REGISTRY.values()} == {
        "fashion_mnist/train-images-idx3-ubyte.gz", "fashion_mnist/train-labels-idx1-ubyte.gz",
        "fashion_mnist/t10k-images-idx3-ubyte.gz", "fashion_mnist/t10k-labels-idx1-ubyte.gz",
        "cifar10/cifar-10-python.tar.gz"}
    assert all(len(e.sha256) == 64 and int(e.sha256, 16) >= 0 for e in D.REGISTRY.values())
