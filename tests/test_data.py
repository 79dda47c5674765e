"""Tests for course_utils.data: every supported layout, the cache, the errors and the mirror download.

All datasets here are tiny synthetic ones built in tmp_path; only the last test reads the real offline
copy, and only when COURSE_CIFAR10 names it. Nothing here depends on the Keras backend.
"""

import hashlib
import http.server
import io
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import tarfile
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from course_utils import data
from course_utils.data import CLASS_NAMES, DatasetError, load_cifar10, subset, train_val_split

# Read once at import: the autouse fixture below removes the variable from every test's environment.
REAL_COPY = os.environ.get(data.DATA_ENV_VAR)
TRAIN_PER_CLASS, TEST_PER_CLASS = 3, 1


@pytest.fixture(autouse=True)
def no_dataset_env_var(monkeypatch):
    """Keep a COURSE_CIFAR10 set by CI from replacing the synthetic sources and mirrors of these tests."""
    monkeypatch.delenv(data.DATA_ENV_VAR, raising=False)


# ---------------------------------------------------------------------------------------- synthetic data

def make_split(per_class, seed):
    """Random images, ``per_class`` of each class, grouped by class like the offline tree."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(CLASS_NAMES), dtype=np.uint8), per_class)
    images = rng.integers(0, 256, size=(len(labels), 32, 32, 3), dtype=np.uint8)
    return images, labels.reshape(-1, 1)


def make_dataset(seed=0):
    return make_split(TRAIN_PER_CLASS, seed), make_split(TEST_PER_CLASS, seed + 1)


def write_batch(path, images, labels):
    """Write one batch the way the official release does: CHW rows, labels as a list, protocol 2."""
    rows = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    with open(path, "wb") as file:
        pickle.dump({b"batch_label": b"synthetic", b"data": rows, b"labels": labels[:, 0].tolist()}, file, 2)


def write_pickle_folder(root, dataset):
    (x_train, y_train), (x_test, y_test) = dataset
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    # Interleave so every batch holds some of every class, as in the official batches.
    for batch in range(5):
        write_batch(folder / f"data_batch_{batch + 1}", x_train[batch::5], y_train[batch::5])
    write_batch(folder / "test_batch", x_test, y_test)
    return folder


def train_in_official_order(dataset):
    """The training set in the order the pickle batches above store it."""
    (x_train, y_train), _ = dataset
    order = np.concatenate([np.arange(len(x_train))[batch::5] for batch in range(5)])
    return x_train[order], y_train[order]


def solid_image(label, index):
    """An image whose red channel encodes the label and green the index, so both survive JPEG."""
    pixels = np.zeros((32, 32, 3), np.uint8)
    pixels[..., 0], pixels[..., 1] = 20 * label + 10, index
    return pixels


def write_image_tree(root, suffix=".png", size=32, classes=CLASS_NAMES):
    """Write ``train/<class>/NNNN<suffix>`` and ``test/<class>/...``; return the root."""
    for split, count in (("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)):
        for class_name in classes:
            folder = root / split / class_name
            folder.mkdir(parents=True)
            label = CLASS_NAMES.index(class_name) if class_name in CLASS_NAMES else 0
            for index in range(count):
                image = Image.fromarray(solid_image(label, index)).resize((size, size))
                image.save(folder / f"{index:04d}{suffix}")
    return root


def write_tar_gz(folder, archive, top_level_name):
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=top_level_name)
    return archive


def write_npz(path, dataset, **overrides):
    (x_train, y_train), (x_test, y_test) = dataset
    arrays = {**dict(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test), **overrides}
    np.savez(path, **{key: value for key, value in arrays.items() if value is not None})
    return path


def assert_keras_shapes(arrays, train_count, test_count):
    (x_train, y_train), (x_test, y_test) = arrays
    assert x_train.shape == (train_count, 32, 32, 3) and x_test.shape == (test_count, 32, 32, 3)
    assert y_train.shape == (train_count, 1) and y_test.shape == (test_count, 1)
    assert {x_train.dtype, y_train.dtype, x_test.dtype, y_test.dtype} == {np.dtype(np.uint8)}


def assert_labels_match_pixels(images, labels):
    assert np.array_equal(images[:, 0, 0, 0], 20 * labels[:, 0] + 10)


def assert_same_arrays(first, second):
    """Compare two ``(x_train, y_train), (x_test, y_test)`` results array by array."""
    for first_split, second_split in zip(first, second):
        for a, b in zip(first_split, second_split):
            assert a.dtype == b.dtype and np.array_equal(a, b)


def cache_files(cache_dir):
    return sorted(path.name for path in Path(cache_dir).glob("*")) if Path(cache_dir).exists() else []


# ---------------------------------------------------------------------------------------------- formats

def test_class_names_follow_official_label_order():
    assert CLASS_NAMES == ("airplane", "automobile", "bird", "cat", "deer",
                           "dog", "frog", "horse", "ship", "truck")


def test_pickle_folder_gives_exact_pixels_and_labels(tmp_path):
    dataset = make_dataset()
    folder = write_pickle_folder(tmp_path / "src", dataset)
    arrays = load_cifar10(folder, cache_dir=tmp_path / "cache", verbose=False)
    assert_keras_shapes(arrays, 10 * TRAIN_PER_CLASS, 10 * TEST_PER_CLASS)
    (x_train, y_train), (x_test, y_test) = arrays
    expected_x, expected_y = train_in_official_order(dataset)
    assert np.array_equal(x_train, expected_x) and np.array_equal(y_train, expected_y)
    assert np.array_equal(x_test, dataset[1][0]) and np.array_equal(y_test, dataset[1][1])


def test_official_tar_gz_matches_its_folder(tmp_path):
    dataset = make_dataset()
    folder = write_pickle_folder(tmp_path / "src", dataset)
    archive = write_tar_gz(folder, tmp_path / "cifar-10-python.tar.gz", "cifar-10-batches-py")
    from_folder = load_cifar10(folder, cache_dir=tmp_path / "cache", verbose=False)
    from_archive = load_cifar10(archive, cache_dir=tmp_path / "cache", verbose=False)
    assert_same_arrays(from_folder, from_archive)


def test_image_folder_labels_by_class_name_and_shuffles_deterministically(tmp_path):
    root = write_image_tree(tmp_path / "tree")
    first = load_cifar10(root, cache_dir=tmp_path / "cache1", verbose=False)
    second = load_cifar10(root, cache_dir=tmp_path / "cache2", verbose=False)
    assert_keras_shapes(first, 10 * TRAIN_PER_CLASS, 10 * TEST_PER_CLASS)
    (x_train, y_train), (x_test, y_test) = first
    assert_labels_match_pixels(x_train, y_train)
    assert_labels_match_pixels(x_test, y_test)
    assert np.bincount(y_train[:, 0]).tolist() == [TRAIN_PER_CLASS] * 10
    # Shuffled: the labels are no longer grouped by class.
    assert not np.all(np.diff(y_train[:, 0].astype(int)) >= 0)
    assert_same_arrays(first, second)


def test_jpeg_tree_in_tar_gz_under_a_top_level_folder(tmp_path):
    root = write_image_tree(tmp_path / "tree", suffix=".jpg")
    archive = write_tar_gz(root, tmp_path / "cifar10-jpeg.tar.gz", "cifar10-jpeg")
    (x_train, y_train), (x_test, y_test) = load_cifar10(archive, cache_dir=tmp_path / "cache", verbose=False)
    assert_keras_shapes(((x_train, y_train), (x_test, y_test)), 10 * TRAIN_PER_CLASS, 10 * TEST_PER_CLASS)
    # JPEG changes pixels slightly, but not by half the distance between two labels' values.
    assert np.abs(x_train[:, 16, 16, 0].astype(int) - (20 * y_train[:, 0] + 10)).max() < 10


def test_archive_order_does_not_change_the_result(tmp_path):
    root = write_image_tree(tmp_path / "tree")
    archive = tmp_path / "reversed.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for file in sorted(root.rglob("*.png"), reverse=True):
            tar.add(file, arcname=f"top/{file.relative_to(root).as_posix()}")
    from_folder = load_cifar10(root, cache_dir=tmp_path / "cache", verbose=False)
    from_archive = load_cifar10(archive, cache_dir=tmp_path / "cache", verbose=False)
    assert_same_arrays(from_folder, from_archive)


def test_npz_source_accepts_flat_labels(tmp_path):
    (x_train, y_train), (x_test, y_test) = make_dataset()
    npz = write_npz(tmp_path / "c.npz", make_dataset(), y_train=y_train[:, 0].astype(np.int64))
    arrays = load_cifar10(npz, cache_dir=tmp_path / "cache", verbose=False)
    assert_keras_shapes(arrays, len(x_train), len(x_test))
    assert np.array_equal(arrays[0][1], y_train) and np.array_equal(arrays[1][0], x_test)


def test_env_var_names_the_source(tmp_path, monkeypatch):
    npz = write_npz(tmp_path / "c.npz", make_dataset())
    monkeypatch.setenv(data.DATA_ENV_VAR, str(npz))
    (x_train, _), _ = load_cifar10(cache_dir=tmp_path / "cache", mirrors=[], verbose=False)
    assert np.array_equal(x_train, make_dataset()[0][0])


# ---------------------------------------------------------------------------------------------- caching

def test_second_load_comes_from_the_cache(tmp_path, monkeypatch):
    root = write_image_tree(tmp_path / "tree")
    first = load_cifar10(root, cache_dir=tmp_path / "cache", verbose=False)
    assert [name.endswith(".npz") for name in cache_files(tmp_path / "cache")] == [True]

    def decoder_must_not_run(path):
        raise AssertionError("decoded again instead of reading the cache")

    monkeypatch.setattr(data, "_decode_source", decoder_must_not_run)
    second = load_cifar10(root, cache_dir=tmp_path / "cache", verbose=False)
    assert_same_arrays(first, second)


def test_cache_dir_defaults_to_env_var(tmp_path, monkeypatch):
    monkeypatch.setenv(data.CACHE_ENV_VAR, str(tmp_path / "env-cache"))
    load_cifar10(write_npz(tmp_path / "c.npz", make_dataset()), verbose=False)
    assert len(cache_files(tmp_path / "env-cache")) == 1


def test_changed_source_is_decoded_again(tmp_path):
    npz = write_npz(tmp_path / "c.npz", make_dataset(seed=0))
    load_cifar10(npz, cache_dir=tmp_path / "cache", verbose=False)
    write_npz(npz, make_dataset(seed=5))
    os.utime(npz, ns=(1, 1))  # A distinct mtime even on file systems with coarse timestamps.
    (x_train, _), _ = load_cifar10(npz, cache_dir=tmp_path / "cache", verbose=False)
    assert np.array_equal(x_train, make_dataset(seed=5)[0][0])


def test_corrupt_cache_is_deleted_and_rebuilt(tmp_path, capsys):
    npz = write_npz(tmp_path / "c.npz", make_dataset())
    load_cifar10(npz, cache_dir=tmp_path / "cache", verbose=False)
    [cache_name] = cache_files(tmp_path / "cache")
    cache = tmp_path / "cache" / cache_name
    cache.write_bytes(cache.read_bytes()[:200])  # As if the disk filled up mid-write.
    (x_train, _), _ = load_cifar10(npz, cache_dir=tmp_path / "cache")
    assert np.array_equal(x_train, make_dataset()[0][0])
    assert "rebuilding" in capsys.readouterr().out
    with np.load(cache) as rebuilt:
        assert np.array_equal(rebuilt["x_train"], x_train)


def test_crash_while_writing_the_cache_leaves_no_file(tmp_path, monkeypatch):
    def crash(file, **arrays):
        """Write part of the file, then die as if interrupted."""
        if isinstance(file, (str, os.PathLike)):
            file = open(file, "wb")
        file.write(b"PK half a cache")
        file.flush()
        raise KeyboardInterrupt

    source = write_npz(tmp_path / "c.npz", make_dataset())  # Before np.savez is broken.
    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(np, "savez", crash)
        load_cifar10(source, cache_dir=tmp_path / "cache", verbose=False)
    assert cache_files(tmp_path / "cache") == []
    (x_train, _), _ = load_cifar10(source, cache_dir=tmp_path / "cache", verbose=False)
    assert np.array_equal(x_train, make_dataset()[0][0])


# ---------------------------------------------------------------------------------------------- errors

def truncated_tar_gz(tmp_path):
    folder = write_pickle_folder(tmp_path / "src", make_dataset())
    archive = write_tar_gz(folder, tmp_path / "cifar-10-python.tar.gz", "cifar-10-batches-py")
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    return archive


def unknown_class_folder(tmp_path):
    root = write_image_tree(tmp_path / "tree")
    (root / "train" / "zebra").mkdir()
    Image.fromarray(solid_image(0, 0)).save(root / "train" / "zebra" / "0000.png")
    return root


def missing_class_folder(tmp_path):
    return write_image_tree(tmp_path / "tree", classes=CLASS_NAMES[:9])


def missing_batch(tmp_path):
    folder = write_pickle_folder(tmp_path / "src", make_dataset())
    (folder / "data_batch_3").unlink()
    return folder


def not_a_pickle_batch(tmp_path):
    folder = write_pickle_folder(tmp_path / "src", make_dataset())
    (folder / "test_batch").write_bytes(b"this is not a pickle")
    return folder


def pickle_that_runs_code(tmp_path):
    folder = write_pickle_folder(tmp_path / "src", make_dataset())
    with open(folder / "test_batch", "wb") as file:
        pickle.dump(os.getcwd, file)  # Any global outside numpy must be refused, not called.
    return folder


def npz_with_labels_out_of_range(tmp_path):
    (_, y_train), _ = make_dataset()
    return write_npz(tmp_path / "c.npz", make_dataset(), y_train=y_train + 10)


def npz_with_wrong_image_shape(tmp_path):
    (x_train, _), _ = make_dataset()
    return write_npz(tmp_path / "c.npz", make_dataset(), x_train=x_train[:, :16])


def truncated_npz(tmp_path):
    npz = write_npz(tmp_path / "c.npz", make_dataset())
    npz.write_bytes(npz.read_bytes()[:1000])
    return npz


def csv_file(tmp_path):
    path = tmp_path / "cifar10.csv"
    path.write_text("label,pixels\n")
    return path


def folder_without_data(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "notes.txt").write_text("no images here")
    return folder


def uncompressed_tar(tmp_path, cut):
    """An image tree as a .tar cut ``cut`` bytes after the start of its last file's header."""
    root = write_image_tree(tmp_path / "tree")
    archive = tmp_path / "cifar10.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(root, arcname="cifar10")
    with tarfile.open(archive) as tar:
        last = tar.getmembers()[-1].offset
    archive.write_bytes(archive.read_bytes()[: last + cut])
    return archive


def npy_renamed_npz(tmp_path):
    np.save(tmp_path / "x.npy", make_dataset()[0][0])
    return (tmp_path / "x.npy").rename(tmp_path / "cifar10.npz")


def two_copies_of_the_tree(tmp_path):
    write_image_tree(tmp_path / "data" / "cifar10")
    write_image_tree(tmp_path / "data" / "cifar10 (copy)")
    return tmp_path / "data"


def bomb_png():
    """A PNG of a few bytes whose header claims 30000x30000 pixels (900 million)."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, "PNG")
    png = bytearray(buffer.getvalue())
    png[16:24] = struct.pack(">II", 30000, 30000)  # IHDR's width and height
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])))  # and its checksum, over type and data
    return bytes(png)


def tree_with_a_bomb(tmp_path):
    root = write_image_tree(tmp_path / "tree")
    (root / "train" / "cat" / "0000.png").write_bytes(bomb_png())
    return root


ERROR_CASES = {
    "truncated tar between files": (lambda tmp_path: uncompressed_tar(tmp_path, 0), ["truncated", "Re-download"]),
    "truncated tar in a file": (lambda tmp_path: uncompressed_tar(tmp_path, 700), ["truncated", "Re-download"]),
    "npy renamed npz": (npy_renamed_npz, ["single array", "np.savez"]),
    "two copies of the tree": (two_copies_of_the_tree, ["more than one copy", "cifar10/", "cifar10 (copy)/"]),
    "decompression bomb": (tree_with_a_bomb, ["train/cat/0000.png", "not a readable image", "Replace or remove"]),
    "missing path": (lambda tmp_path: tmp_path / "nowhere.tar.gz", ["does not exist", "COURSE_CIFAR10"]),
    "truncated tar.gz": (truncated_tar_gz, ["truncated", "Re-download", "COURSE_CIFAR10"]),
    "npz missing a key": (lambda tmp_path: write_npz(tmp_path / "c.npz", make_dataset(), y_test=None),
                          ["lacks", "y_test", "np.savez"]),
    "truncated npz": (truncated_npz, ["not a valid .npz", "COURSE_CIFAR10"]),
    "labels out of range": (npz_with_labels_out_of_range, ["labels", "0..9"]),
    "wrong image shape": (npz_with_wrong_image_shape, ["x_train", "(N, 32, 32, 3)"]),
    "unknown class folder": (unknown_class_folder, ["train/zebra", "not a CIFAR-10 class", "rename"]),
    "missing class folder": (missing_class_folder, ["9 of the 10", "truck"]),
    "wrong image size": (lambda tmp_path: write_image_tree(tmp_path / "tree", size=16),
                         ["16x16", "32x32", "Resize"]),
    "missing batch file": (missing_batch, ["data_batch_3", "Re-download"]),
    "batch not a pickle": (not_a_pickle_batch, ["test_batch", "not a valid CIFAR-10 batch"]),
    "pickle running code": (pickle_that_runs_code, ["not a valid CIFAR-10 batch", "getcwd"]),
    "unrecognised file": (csv_file, ["not a recognised", ".npz"]),
    "folder without data": (folder_without_data, ["no CIFAR-10 data", "train/<class>"]),
}


@pytest.mark.parametrize("case", ERROR_CASES)
def test_bad_source_raises_helpful_error_and_writes_no_cache(tmp_path, case):
    make_source, expected_words = ERROR_CASES[case]
    source = make_source(tmp_path)
    with pytest.raises(DatasetError) as raised:
        load_cifar10(source, cache_dir=tmp_path / "cache", verbose=False)
    for word in expected_words:
        assert word in str(raised.value)
    assert cache_files(tmp_path / "cache") == []


def test_train_val_split_and_subset():
    x, y = np.arange(50), np.arange(50) % 10
    (x_train, y_train), (x_val, y_val) = train_val_split(x, y, val_size=10)
    assert x_train.tolist() == list(range(40)) and x_val.tolist() == list(range(40, 50))
    assert np.array_equal(y_val, y[40:])
    x_few, y_few = subset(x, y, 5)
    assert x_few.tolist() == [0, 1, 2, 3, 4] and np.array_equal(y_few, y[:5])


@pytest.mark.parametrize("call", [
    lambda x, y: train_val_split(x, y, val_size=0),
    lambda x, y: train_val_split(x, y, val_size=len(x)),
    lambda x, y: train_val_split(x, y, val_size=2.5),
    lambda x, y: train_val_split(x, y[:3]),
    lambda x, y: subset(x, y, 0),
    lambda x, y: subset(x, y, len(x) + 1),
    lambda x, y: subset(x, y, True),
])
def test_split_arguments_are_validated(call):
    with pytest.raises(ValueError):
        call(np.arange(20), np.arange(20))


# ---------------------------------------------------------------------------------------------- download

class RangeRequestHandler(http.server.BaseHTTPRequestHandler):
    """Serves files from ``server.root``; honours ``Range: bytes=N-`` only if ``server.honour_range``."""

    def do_GET(self):
        self.server.requests.append((self.path, self.headers.get("Range")))
        file = self.server.root / self.path.lstrip("/")
        if not file.is_file():
            self.send_error(404, "File not found")
            return
        body, start = file.read_bytes(), 0
        requested_range = self.headers.get("Range")
        if requested_range and self.server.honour_range:
            start = int(requested_range.removeprefix("bytes=").split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        self.wfile.write(body[start:])

    def log_message(self, *args):  # Keep the pytest output clean.
        pass


@pytest.fixture
def mirror_server(tmp_path):
    """A local HTTP server on a free port, serving tmp_path/www, with a tiny official-format archive."""
    root = tmp_path / "www"
    root.mkdir()
    folder = write_pickle_folder(tmp_path / "src", make_dataset())
    archive = write_tar_gz(folder, root / "cifar-10-python.tar.gz", "cifar-10-batches-py")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RangeRequestHandler)
    server.root, server.requests, server.honour_range = root, [], True
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    server.md5 = "md5:" + hashlib.md5(archive.read_bytes()).hexdigest()
    server.archive = archive
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def refused_url():
    """A URL on a port nobody listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/cifar-10-python.tar.gz"


def test_download_skips_bad_mirrors_and_verifies_the_good_one(tmp_path, mirror_server, capsys):
    good = f"{mirror_server.url}/cifar-10-python.tar.gz"
    mirrors = [
        (f"{mirror_server.url}/missing.tar.gz", mirror_server.md5),
        (good, "sha256:" + "0" * 64),
        (good, mirror_server.md5),
    ]
    cache_dir = tmp_path / "cache"
    arrays = load_cifar10(cache_dir=cache_dir, mirrors=mirrors)
    expected_x, _ = train_in_official_order(make_dataset())
    assert np.array_equal(arrays[0][0], expected_x)
    output = capsys.readouterr().out
    assert "Mirror 1/3 failed" in output and "404" in output
    assert "Mirror 2/3 failed" in output and "checksum mismatch" in output
    assert "Mirror 3/3 failed" not in output
    tried = [path for path, _ in mirror_server.requests]
    assert tried == ["/missing.tar.gz", "/cifar-10-python.tar.gz", "/cifar-10-python.tar.gz"]
    assert (cache_dir / data.ARCHIVE_NAME).read_bytes() == mirror_server.archive.read_bytes()
    assert not list(cache_dir.glob("*.part"))
    # Once downloaded, no mirror is needed again.
    again = load_cifar10(cache_dir=cache_dir, mirrors=[], verbose=False)
    assert np.array_equal(again[0][0], expected_x)


def test_download_resumes_a_partial_file_with_a_range_request(tmp_path, mirror_server):
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    whole = mirror_server.archive.read_bytes()
    (cache_dir / f"{data.ARCHIVE_NAME}.part").write_bytes(whole[: len(whole) // 2])
    load_cifar10(cache_dir=cache_dir, mirrors=[(f"{mirror_server.url}/cifar-10-python.tar.gz", mirror_server.md5)],
                 verbose=False)
    assert mirror_server.requests == [("/cifar-10-python.tar.gz", f"bytes={len(whole) // 2}-")]
    assert (cache_dir / data.ARCHIVE_NAME).read_bytes() == whole


def test_download_restarts_when_the_server_ignores_the_range(tmp_path, mirror_server):
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    (cache_dir / f"{data.ARCHIVE_NAME}.part").write_bytes(b"stale bytes from some other file")
    mirror_server.honour_range = False
    load_cifar10(cache_dir=cache_dir, mirrors=[(f"{mirror_server.url}/cifar-10-python.tar.gz", mirror_server.md5)],
                 verbose=False)
    assert (cache_dir / data.ARCHIVE_NAME).read_bytes() == mirror_server.archive.read_bytes()


def test_all_mirrors_failing_lists_each_and_says_how_to_fix(tmp_path, mirror_server, monkeypatch):
    monkeypatch.setattr(data, "DOWNLOAD_TIMEOUT_S", 0.5)
    silent = socket.socket()  # Accepts connections but never answers: the download must time out.
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    good = f"{mirror_server.url}/cifar-10-python.tar.gz"
    mirrors = [
        (f"{mirror_server.url}/missing.tar.gz", mirror_server.md5),
        (refused_url(), mirror_server.md5),
        (f"http://127.0.0.1:{silent.getsockname()[1]}/cifar-10-python.tar.gz", mirror_server.md5),
        (good, "md5:" + "0" * 32),
    ]
    try:
        with pytest.raises(DatasetError) as raised:
            load_cifar10(cache_dir=tmp_path / "cache", mirrors=mirrors, verbose=False)
    finally:
        silent.close()
    message = str(raised.value)
    for number, (url, _) in enumerate(mirrors, start=1):
        assert f"{number}. {url}" in message
    assert "404" in message and "cannot connect" in message and "checksum mismatch" in message
    assert "timed out" in message
    assert "source=" in message and "COURSE_CIFAR10" in message and "cifar-10-python.tar.gz" in message
    assert cache_files(tmp_path / "cache") == []


def test_malformed_checksum_is_rejected_before_downloading(tmp_path, mirror_server):
    with pytest.raises(ValueError, match="md5:<hex digest>"):
        load_cifar10(cache_dir=tmp_path / "cache", mirrors=[(mirror_server.url, "c58f30108f")], verbose=False)
    assert mirror_server.requests == []


# ---------------------------------------------------------------------------------------------- real data

@pytest.mark.skipif(not REAL_COPY or not Path(REAL_COPY).exists(),
                    reason="COURSE_CIFAR10 does not name the offline CIFAR-10 copy "
                           "(CI sets it to /work/shared/data/cifar10-jpeg.tar.gz)")
def test_real_offline_copy():
    # The default cache on purpose: the notebooks reuse it afterwards.
    (x_train, y_train), (x_test, y_test) = load_cifar10(REAL_COPY, verbose=False)
    assert_keras_shapes(((x_train, y_train), (x_test, y_test)), 50000, 10000)
    assert np.bincount(y_train[:, 0], minlength=10).tolist() == [5000] * 10
    assert np.bincount(y_test[:, 0], minlength=10).tolist() == [1000] * 10
    (_, y_fit), (_, y_val) = train_val_split(x_train, y_train)
    assert set(np.unique(y_fit)) == set(range(10)) and set(np.unique(y_val)) == set(range(10))
    # Real photographs, not blank or noise images (a sample keeps the check fast).
    sample = x_train[:1000].astype(np.float32)
    assert 50 < sample.mean() < 200 and 30 < sample.std() < 100


def test_mirrors_from_the_environment_come_first(monkeypatch):
    md5, sha256 = "md5:" + "0f" * 16, "sha256:" + "ab" * 32
    monkeypatch.setenv(data.MIRRORS_ENV_VAR, f"http://127.0.0.1:1/a.tar.gz={md5}  http://127.0.0.1:2/b.tar.gz={sha256}")
    mirrors = data.configured_mirrors()
    assert mirrors[:2] == [("http://127.0.0.1:1/a.tar.gz", md5), ("http://127.0.0.1:2/b.tar.gz", sha256)]
    assert mirrors[2:] == list(data.DEFAULT_MIRRORS)
    monkeypatch.setenv(data.MIRRORS_ENV_VAR, "no-checksum-here")
    with pytest.raises(data.DatasetError, match="URL=algorithm:hex"):
        data.configured_mirrors()



@pytest.mark.parametrize("checksum", ["crc32:c58f30108f718f92721af3b95e74349a", "md5:c58f30108f", "md5:" + "z" * 32])
def test_a_bad_checksum_in_the_mirror_setting_is_a_dataset_error(monkeypatch, checksum):
    monkeypatch.setenv(data.MIRRORS_ENV_VAR, f"http://127.0.0.1:1/a.tar.gz={checksum}")
    with pytest.raises(DatasetError, match=f"{data.MIRRORS_ENV_VAR} entry .*md5, sha1, sha256, sha512"):
        load_cifar10(mirrors=None, verbose=False)


# ------------------------------------------------------------------------------------ odd images, pruning

def test_16_bit_grayscale_pngs_keep_their_brightness(tmp_path):
    root = write_image_tree(tmp_path / "tree")
    gray = np.full((32, 32), 128 * 257, np.uint16)  # mid-gray in 16 bits
    Image.fromarray(gray).save(root / "train" / "cat" / "0000.png")
    assert Image.open(root / "train" / "cat" / "0000.png").mode.startswith("I")
    (x_train, y_train), _ = load_cifar10(root, cache_dir=tmp_path / "cache", verbose=False)
    cats = x_train[y_train[:, 0] == CLASS_NAMES.index("cat")]
    assert any(np.all(image == 128) for image in cats), "the 16-bit image should be mid-gray, not white"


CACHE_WRITER_KILLED = """
import os, signal, sys
import numpy as np
from course_utils import data

def killed_while_writing(file, **arrays):
    file.write(b"PK" + bytes(100000))  # part of the cache, then the kill
    file.flush()
    os.kill(os.getpid(), signal.SIGKILL)

np.savez = killed_while_writing
data.load_cifar10(sys.argv[1], cache_dir=sys.argv[2], verbose=False)
"""


def test_a_kill_while_the_cache_is_written_leaves_nothing_on_the_next_load(tmp_path):
    source, cache = write_npz(tmp_path / "c.npz", make_dataset()), tmp_path / "cache"
    killed = subprocess.run([sys.executable, "-c", CACHE_WRITER_KILLED, str(source), str(cache)], capture_output=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
    assert [name.endswith(".tmp") for name in cache_files(cache)] == [True]  # the orphan the kill left
    (x_train, _), _ = load_cifar10(source, cache_dir=cache, verbose=False)
    assert np.array_equal(x_train, make_dataset()[0][0])
    assert [name.endswith(".npz") for name in cache_files(cache)] == [True], cache_files(cache)


def test_a_changed_source_replaces_its_old_cache_and_old_formats_are_pruned(tmp_path):
    npz, cache = write_npz(tmp_path / "c.npz", make_dataset(seed=0)), tmp_path / "cache"
    other = load_cifar10(write_npz(tmp_path / "other.npz", make_dataset(seed=3)), cache_dir=cache, verbose=False)
    load_cifar10(npz, cache_dir=cache, verbose=False)
    (cache / "cifar10-0123456789abcdef0123.npz").write_bytes(b"a cache of an older version")
    write_npz(npz, make_dataset(seed=5))
    os.utime(npz, ns=(1, 1))
    load_cifar10(npz, cache_dir=cache, verbose=False)
    assert len(cache_files(cache)) == 2  # this source's new cache and the other source's, nothing stale
    again = load_cifar10(tmp_path / "other.npz", cache_dir=cache, mirrors=[], verbose=False)
    assert_same_arrays(again, other)


# ------------------------------------------------------------------------------ concurrency, bad downloads

class SlowHandler(RangeRequestHandler):
    """Sends half of the file, then waits for a second request (up to 2 s) before the rest: so a second
    download that does not wait for the first would overlap it, whatever the machine's speed."""

    def do_GET(self):
        self.server.requests.append((self.path, self.headers.get("Range")))
        if len(self.server.requests) > 1:
            self.server.second_request.set()
        body = (self.server.root / self.path.lstrip("/")).read_bytes()
        start = int(self.headers.get("Range", "bytes=0-").removeprefix("bytes=").split("-")[0])
        self.send_response(206 if start else 200)  # resumes like a real server: a second download appends
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        half = max(start, len(body) // 2)
        self.wfile.write(body[start:half])
        self.wfile.flush()
        if len(self.server.requests) == 1:
            self.server.second_request.wait(2)
        self.wfile.write(body[half:])


DOWNLOAD = """
import sys
from course_utils import data
(x_train, _), _ = data.load_cifar10(cache_dir=sys.argv[1], mirrors=[(sys.argv[2], sys.argv[3])])
print("loaded", int(x_train.sum()))
"""


def test_two_first_downloads_at_the_same_moment_both_succeed(tmp_path, mirror_server):
    mirror_server.RequestHandlerClass, mirror_server.second_request = SlowHandler, threading.Event()
    command = [sys.executable, "-c", DOWNLOAD, str(tmp_path / "cache"), f"{mirror_server.url}/{data.ARCHIVE_NAME}",
               mirror_server.md5]
    children = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [child.communicate(timeout=120) for child in children]
    assert [child.returncode for child in children] == [0, 0], outputs
    expected = f"loaded {int(train_in_official_order(make_dataset())[0].sum())}"
    assert [out.strip().splitlines()[-1] for out, _ in outputs] == [expected, expected]
    assert len(mirror_server.requests) == 1, "the second process should wait for the first's download"
    assert not [name for name in cache_files(tmp_path / "cache") if name.endswith((".part", ".tmp"))]


def test_a_downloaded_archive_that_does_not_decode_is_not_reused(tmp_path, mirror_server):
    good = mirror_server.archive.read_bytes()
    with tarfile.open(mirror_server.archive, "w:gz") as tar:  # a valid archive holding no CIFAR-10
        tar.add(write_image_tree(tmp_path / "few", classes=CLASS_NAMES[:2]), arcname="few")
    url = f"{mirror_server.url}/{data.ARCHIVE_NAME}"
    broken = [(url, "md5:" + hashlib.md5(mirror_server.archive.read_bytes()).hexdigest())]
    with pytest.raises(DatasetError, match="was deleted, so the next call downloads it again"):
        load_cifar10(cache_dir=tmp_path / "cache", mirrors=broken, verbose=False)
    assert cache_files(tmp_path / "cache") == []
    mirror_server.archive.write_bytes(good)  # the instructor fixes the mirror
    arrays = load_cifar10(cache_dir=tmp_path / "cache", mirrors=[(url, mirror_server.md5)], verbose=False)
    assert np.array_equal(arrays[0][0], train_in_official_order(make_dataset())[0])


# -------------------------------------------------------------------------------------------- permissions

# Runs the code with file permissions in force: as root, chmod alone does not stop reads or writes, so the
# capabilities that bypass them are dropped from the bounding set before the exec (then from the process).
WITHOUT_ROOT_POWERS = """
import ctypes, os, sys
if os.geteuid() == 0:
    libc = ctypes.CDLL(None, use_errno=True)
    if any(libc.prctl(24, capability, 0, 0, 0) for capability in (1, 2)):  # PR_CAPBSET_DROP: DAC_OVERRIDE, READ_SEARCH
        print("cannot drop CAP_DAC_OVERRIDE", ctypes.get_errno())
        sys.exit(77)
os.execv(sys.executable, [sys.executable, "-c", sys.argv[1], *sys.argv[2:]])
"""

LOAD = """
import sys
from course_utils import data
try:
    (x_train, _), _ = data.load_cifar10(None if sys.argv[1] == "-" else sys.argv[1], cache_dir=sys.argv[2],
                                        mirrors=[(sys.argv[3], "md5:" + "0" * 32)] if sys.argv[3:] else [])
    print("loaded", len(x_train))
except data.DatasetError as error:
    print("DatasetError:", error)
"""


def load_without_root_powers(*args):
    completed = subprocess.run([sys.executable, "-c", WITHOUT_ROOT_POWERS, LOAD, *map(str, args)],
                               capture_output=True, text=True)
    if completed.returncode == 77:
        pytest.skip(f"running as root and {completed.stdout.strip()}: chmod would not stop this process")
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed.stdout


@pytest.fixture
def read_only(tmp_path):
    """chmod paths to a mode for the test, and back afterwards so that tmp_path can be cleaned up."""
    changed = []

    def chmod(path, mode):
        changed.append(path)
        path.chmod(mode)

    yield chmod
    for path in changed:
        path.chmod(0o755)


def test_an_unwritable_cache_folder_on_the_download_path_says_so(tmp_path, mirror_server, read_only):
    cache = tmp_path / "cache"
    cache.mkdir()
    read_only(cache, 0o555)
    output = load_without_root_powers("-", cache, f"{mirror_server.url}/{data.ARCHIVE_NAME}")
    assert "DatasetError: Cannot download CIFAR-10 into the cache folder" in output
    assert "not writable" in output and data.CACHE_ENV_VAR in output
    assert mirror_server.requests == [], "no mirror is to blame"


def test_a_read_only_cache_holding_a_corrupt_cache_file_still_loads(tmp_path, read_only):
    source, cache = write_npz(tmp_path / "c.npz", make_dataset()), tmp_path / "cache"
    load_cifar10(source, cache_dir=cache, verbose=False)
    [name] = cache_files(cache)
    (cache / name).write_bytes(b"PK broken")
    read_only(cache, 0o555)
    output = load_without_root_powers(source, cache)
    assert "rebuilding" in output and "continuing without it" in output
    assert output.strip().endswith(f"loaded {len(make_dataset()[0][0])}")


def test_an_unreadable_image_or_archive_names_the_file_and_the_fix(tmp_path, read_only):
    root = write_image_tree(tmp_path / "tree")
    read_only(root / "train" / "dog" / "0001.png", 0o000)
    output = load_without_root_powers(root, tmp_path / "cache")
    assert "DatasetError:" in output and "train/dog/0001.png cannot be read" in output and "chmod a+r" in output
    archive = write_npz(tmp_path / "c.npz", make_dataset())
    read_only(archive, 0o000)
    output = load_without_root_powers(archive, tmp_path / "cache")
    assert "DatasetError:" in output and "c.npz cannot be read" in output and "chmod a+r" in output
