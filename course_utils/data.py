"""CIFAR-10 as the same arrays ``keras.datasets.cifar10.load_data()`` returns, online or offline.

``load_cifar10()`` reads any of these, detected automatically:

* the official python release: the ``cifar-10-batches-py`` folder or ``cifar-10-python.tar.gz``;
* an image-folder tree ``train/<class>/*.jpg|png`` and ``test/<class>/*``, as a folder or a ``.tar.gz``;
* an ``.npz`` file with the arrays ``x_train``, ``y_train``, ``x_test``, ``y_test``.

With no ``source`` it uses the path in the environment variable ``COURSE_CIFAR10`` and, if that is unset,
downloads the official archive. Decoded arrays are cached as an ``.npz``, so only the first load is slow.

No deep-learning framework is imported here: the numpy arrays work with every Keras backend.
"""

import contextlib
import hashlib
import http.client
import io
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, UnidentifiedImageError

try:
    import fcntl  # POSIX: locks that the system releases when their process dies, even by a kill
except ImportError:  # Windows: two first downloads at the same moment are not serialised there
    fcntl = None

CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
DATA_ENV_VAR = "COURSE_CIFAR10"
CACHE_ENV_VAR = "COURSE_CACHE_DIR"
# Extra mirrors an instructor can host (a campus server, a bucket): whitespace-separated "URL=algorithm:hex"
# entries, tried before DEFAULT_MIRRORS.
MIRRORS_ENV_VAR = "COURSE_CIFAR10_MIRRORS"
ARCHIVE_NAME = "cifar-10-python.tar.gz"
# (url, "algorithm:hexdigest") pairs, tried in order. Only URLs known to serve the official file belong here.
DEFAULT_MIRRORS = [
    ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "md5:c58f30108f718f92721af3b95e74349a"),
]
CHECKSUM_ALGORITHMS = ("md5", "sha1", "sha256", "sha512")
DOWNLOAD_TIMEOUT_S = 60
SHUFFLE_SEED = 0
IMAGE_SHAPE = (32, 32, 3)
ARRAY_KEYS = ("x_train", "y_train", "x_test", "y_test")
PICKLE_BATCHES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
SPLITS = ("train", "test")
# Part of every cache key: bump it whenever decoding changes, so stale caches are never reused.
CACHE_VERSION = 1

_HOW_TO_FIX = (
    f"Download {ARCHIVE_NAME} by hand (https://www.cs.toronto.edu/~kriz/cifar.html) and pass it directly, "
    f"load_cifar10(source='/path/to/{ARCHIVE_NAME}'), or set it once for every notebook: "
    f"export {DATA_ENV_VAR}=/path/to/{ARCHIVE_NAME}"
)


class DatasetError(RuntimeError):
    """CIFAR-10 could not be loaded; the message says what is wrong and how to fix it."""


def configured_mirrors():
    """The mirrors named in ``$COURSE_CIFAR10_MIRRORS`` followed by ``DEFAULT_MIRRORS``."""
    extra = []
    for entry in os.environ.get(MIRRORS_ENV_VAR, "").split():
        url, separator, checksum = entry.rpartition("=")
        if not separator or not url:
            raise DatasetError(
                f"{MIRRORS_ENV_VAR} entry {entry!r} is not of the form URL=algorithm:hex, for example "
                f"https://example.org/{ARCHIVE_NAME}=md5:{DEFAULT_MIRRORS[0][1].split(':')[1]}"
            )
        try:
            _parse_checksum(checksum)
        except ValueError as error:
            raise DatasetError(f"{MIRRORS_ENV_VAR} entry {entry!r}: {error}") from None
        extra.append((url, checksum))
    return extra + list(DEFAULT_MIRRORS)


def load_cifar10(source=None, cache_dir=None, mirrors=None, verbose=True):
    """Load CIFAR-10 as ``(x_train, y_train), (x_test, y_test)``, shaped like the Keras loader.

    ``x`` is uint8 ``(N, 32, 32, 3)``, ``y`` is uint8 ``(N, 1)`` with indices into ``CLASS_NAMES``.
    ``source`` is a local copy in any supported layout; ``None`` means ``$COURSE_CIFAR10`` or, if that is
    unset, a download from ``mirrors`` (default: the mirrors in ``$COURSE_CIFAR10_MIRRORS``, then
    ``DEFAULT_MIRRORS``). ``cache_dir`` defaults to
    ``$COURSE_CACHE_DIR`` or ``~/.cache/course_utils``. Raises ``DatasetError`` when loading fails.
    """
    cache_dir = _resolve_cache_dir(cache_dir)
    origin = "source"
    if source is None and os.environ.get(DATA_ENV_VAR):
        source, origin = os.environ[DATA_ENV_VAR], f"The environment variable {DATA_ENV_VAR}"
    downloaded = source is None
    if downloaded:
        source = _download(cache_dir, configured_mirrors() if mirrors is None else mirrors, verbose)
    path = Path(source).expanduser().resolve()
    if not path.exists():
        relative = "" if Path(source).expanduser().is_absolute() else (
            f" (the relative path {str(source)!r} is read from the current folder, {Path.cwd()}: use an absolute path)")
        raise DatasetError(
            f"{origin} points at {path}, which does not exist{relative}. Point it at a CIFAR-10 copy "
            f"({ARCHIVE_NAME}, cifar-10-batches-py, an image-folder tree or an .npz). {_HOW_TO_FIX}"
        )
    cache_file = cache_dir / _cache_name(path)
    arrays = _read_cache(cache_file, verbose)
    if arrays is None:
        _say(verbose, f"Decoding CIFAR-10 from {path} (first time only; cached afterwards).")
        try:
            arrays = _check_arrays(_decode_source(path), path)
        except DatasetError as error:
            if not downloaded:
                raise
            # A downloaded archive that cannot be decoded must not be reused: the next call downloads again.
            path.unlink(missing_ok=True)
            raise DatasetError(f"{error}\nThe downloaded {path.name} was deleted, so the next call downloads it "
                               f"again (from a mirror that may be fixed by then).") from error
        _write_cache_atomically(cache_file, arrays, verbose)
    return (arrays["x_train"], arrays["y_train"]), (arrays["x_test"], arrays["y_test"])


def train_val_split(x, y, val_size=10000):
    """Split into the first ``len(x) - val_size`` samples for training and the last ``val_size`` for validation.

    The reference examples train on the first 40,000 CIFAR-10 training images and validate on the last 10,000.
    The parts are views of the inputs, not copies.
    """
    _require_same_length(x, y)
    _require_int_in_range("val_size", val_size, 1, len(x) - 1, len(x))
    cut = len(x) - val_size
    return (x[:cut], y[:cut]), (x[cut:], y[cut:])


def subset(x, y, n):
    """Return the first ``n`` samples (views). The loaded data is shuffled, so classes are roughly balanced."""
    _require_same_length(x, y)
    _require_int_in_range("n", n, 1, len(x), len(x))
    return x[:n], y[:n]


def _require_same_length(x, y):
    if len(x) != len(y):
        raise ValueError(f"x and y must have the same length, got {len(x)} and {len(y)}.")


def _require_int_in_range(name, value, low, high, sample_count):
    # bool is an int subclass, but val_size=True is certainly a mistake.
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}.")
    if not low <= value <= high:
        raise ValueError(f"{name} must be from {low} to {high} for {sample_count} samples, got {value}.")


def _say(verbose, message):
    if verbose:
        print(message, flush=True)


# ---------------------------------------------------------------------------------------------- caching

def _resolve_cache_dir(cache_dir):
    if cache_dir is None:
        cache_dir = os.environ.get(CACHE_ENV_VAR) or Path.home() / ".cache" / "course_utils"
    return Path(cache_dir).expanduser().absolute()


def _cache_name(path):
    """``cifar10-v<version>-<path hash>-<content hash>.npz``: the path part finds this source's older caches."""
    path_hash = hashlib.sha256(str(path).encode()).hexdigest()[:8]
    return f"cifar10-v{CACHE_VERSION}-{path_hash}-{_source_fingerprint(path)}.npz"


def _is_stale_cache(name, current):
    """Another version's cache, or this source's cache from before it changed: never read again."""
    if not (name.startswith("cifar10-") and name.endswith(".npz")) or name == current:
        return False
    return not name.startswith(f"cifar10-v{CACHE_VERSION}-") or name.startswith(current.rsplit("-", 1)[0] + "-")


def _is_orphan_temp(name):
    """A temporary cache file whose writer (named by its pid) is gone, e.g. killed mid-write."""
    parts = name.split(".")
    if not (name.startswith("cifar10-") and name.endswith(".tmp") and len(parts) >= 3 and parts[-2].isdigit()):
        return False
    try:
        os.kill(int(parts[-2]), 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive, but another user's
        pass
    return False


def _prune_cache(cache_dir, current):
    """Delete orphaned temporary files and stale caches (about 184 MB each) next to ``current``."""
    for file in cache_dir.iterdir():
        if _is_orphan_temp(file.name) or _is_stale_cache(file.name, current):
            with contextlib.suppress(OSError):  # pruning only saves space
                file.unlink()


def _source_fingerprint(path):
    """Hash the absolute path, size and modification time of the source, so any change gives a new cache file.

    For a folder every file inside counts: a folder's own mtime does not change when a file in a
    subfolder is replaced.
    """
    digest = hashlib.sha256(f"v{CACHE_VERSION}".encode())
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        stat = file.stat()
        digest.update(f"|{file}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:20]


def _read_cache(cache_file, verbose):
    """Return the cached arrays, or ``None`` if there is no usable cache (a broken one is deleted)."""
    if not cache_file.exists():
        return None
    try:
        with np.load(cache_file, allow_pickle=False) as stored:
            arrays = {key: stored[key] for key in ARRAY_KEYS}
        return _check_arrays(arrays, cache_file)
    except Exception as error:  # Whatever is wrong with a cache, the cure is the same: rebuild it.
        _say(verbose, f"Cache {cache_file} is unreadable ({error}); rebuilding it.")
        with contextlib.suppress(OSError):  # a read-only cache folder: decode again and go on without a cache
            cache_file.unlink(missing_ok=True)
        return None


def _write_cache_atomically(cache_file, arrays, verbose):
    """Write to a temporary file in the same folder, then rename: readers never see a half-written cache."""
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        _prune_cache(cache_file.parent, cache_file.name)
        # The pid in the name lets a later run delete this file if this process is killed mid-write.
        handle, temp_name = tempfile.mkstemp(dir=cache_file.parent, prefix=f"{cache_file.name}.",
                                             suffix=f".{os.getpid()}.tmp")
    except OSError as error:  # The cache only saves time; a read-only home must not stop the course.
        _say(verbose, f"Could not write the cache in {cache_file.parent} ({error}); continuing without it.")
        return
    try:
        with os.fdopen(handle, "wb") as temp:
            np.savez(temp, **arrays)  # Uncompressed: loading 180 MB from disk beats decompressing it.
            temp.flush()
            os.fsync(temp.fileno())  # renamed only once every byte is on disk
        os.chmod(temp_name, 0o644)  # mkstemp makes it private; a shared cache folder must stay readable.
        os.replace(temp_name, cache_file)
    except BaseException:  # Includes Ctrl-C: never leave the temporary file behind.
        Path(temp_name).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------------------------- decoding

def _decode_source(path):
    """Read a folder, a tar archive or an .npz into a dict of the four arrays."""
    name = path.name.lower()
    try:
        if path.is_file():
            open(path, "rb").close()
    except OSError as error:
        raise DatasetError(
            f"{path} cannot be read ({type(error).__name__}: {error}). Make it readable (chmod a+r) or point "
            f"{DATA_ENV_VAR} at a copy you can read."
        ) from error
    if path.is_dir():
        return _arrays_from_files(_folder_files(path), path)
    if name.endswith((".tar.gz", ".tgz", ".tar")):
        return _arrays_from_files(_tar_files(path), path)
    if name.endswith(".npz"):
        return _read_npz(path)
    raise DatasetError(
        f"{path} is not a recognised CIFAR-10 source: expected a folder, a .tar.gz/.tgz/.tar archive or an "
        f".npz file. {_HOW_TO_FIX}"
    )


def _is_dataset_file(name):
    """True for an official batch file or an image at ``<split>/<class>/<image>``, at any depth."""
    parts = PurePosixPath(name).parts
    if parts[-1].startswith("."):  # macOS adds "._name" resource files to archives it creates.
        return False
    if parts[-1] in PICKLE_BATCHES:
        return True
    return len(parts) >= 3 and parts[-3] in SPLITS and parts[-1].lower().endswith(IMAGE_SUFFIXES)


def _folder_files(root):
    """Yield ``(relative name, bytes)`` for every dataset file under ``root``."""
    for file in sorted(root.rglob("*")):
        name = file.relative_to(root).as_posix()
        if file.is_file() and _is_dataset_file(name):
            try:
                data = file.read_bytes()
            except OSError as error:
                raise DatasetError(
                    f"{file} cannot be read ({type(error).__name__}: {error}). Make it readable "
                    f"(chmod a+r) or remove it."
                ) from error
            yield name, data


def _tar_files(path):
    """Yield ``(member name, bytes)`` for every dataset file, streaming through the archive once.

    Nothing is extracted to disk: 60,000 tiny files would take far longer to write than to decode.
    """
    try:
        with tarfile.open(path, "r:*") as archive:
            for member in archive:
                if member.isfile() and _is_dataset_file(member.name):
                    data = archive.extractfile(member).read()
                    if len(data) != member.size:
                        raise EOFError(f"{member.name} holds {len(data)} of its {member.size} bytes")
                    yield member.name, data
            # tarfile stops quietly where an uncompressed archive is cut between two files; a complete
            # archive ends with two zero blocks.
            archive.fileobj.seek(archive.offset)
            if len(archive.fileobj.read(2 * tarfile.BLOCKSIZE)) < 2 * tarfile.BLOCKSIZE:
                raise EOFError("the archive ends without its end-of-archive marker")
    except (tarfile.TarError, EOFError, zlib.error, OSError) as error:
        raise DatasetError(
            f"{path} is truncated or not a valid tar.gz archive ({error}). "
            f"Re-download it or point {DATA_ENV_VAR} at a good copy."
        ) from error


def _arrays_from_files(files, source):
    """Decode the files of the official python layout or of an image-folder tree."""
    batches, images, roots = {}, [], set()
    for name, data in files:
        parts = PurePosixPath(name).parts
        if parts[-1] in PICKLE_BATCHES:
            batches[parts[-1]] = data
            roots.add(PurePosixPath(*parts[:-1]).as_posix())
        else:
            images.append((name, data))
            roots.add(PurePosixPath(*parts[:-3]).as_posix())
    if len(roots) > 1:  # e.g. an extracted copy next to another: merged, every image would count twice
        found = ", ".join(f"{root}/" if root != "." else "the top level" for root in sorted(roots))
        raise DatasetError(
            f"{source} holds more than one copy of CIFAR-10 ({found}). Point {DATA_ENV_VAR} or source= at "
            f"one of them, or remove the others."
        )
    if batches:
        return _arrays_from_batches(batches, source)
    if images:
        return _arrays_from_image_tree(images, source)
    raise DatasetError(
        f"{source} holds no CIFAR-10 data: found neither the official batch files (data_batch_1..5, "
        f"test_batch) nor images in train/<class>/ and test/<class>/ folders. Point {DATA_ENV_VAR} or "
        f"source= at the official {ARCHIVE_NAME}, its cifar-10-batches-py folder or such an image tree."
    )


class _NumpyArrayUnpickler(pickle.Unpickler):
    """Unpickle only what CIFAR-10 batches contain: a plain pickle of a stranger's file can run any code."""

    NUMPY_NAMES = {"_reconstruct", "_frombuffer", "ndarray", "dtype"}

    def find_class(self, module, name):
        # Python 3 writes bytes in protocol-2 pickles as _codecs.encode(text, "latin1"), which is harmless.
        allowed_numpy = module.split(".")[0] == "numpy" and name in self.NUMPY_NAMES
        if allowed_numpy or (module, name) == ("_codecs", "encode"):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"unexpected object {module}.{name} in a CIFAR-10 batch")


def _arrays_from_batches(batches, source):
    missing = [name for name in PICKLE_BATCHES if name not in batches]
    if missing:
        raise DatasetError(
            f"{source} lacks the batch file(s) {', '.join(missing)}. Re-download {ARCHIVE_NAME} "
            f"or point {DATA_ENV_VAR} at a complete copy."
        )
    train = [_unpickle_batch(batches[name], name, source) for name in PICKLE_BATCHES[:-1]]
    x_test, y_test = _unpickle_batch(batches["test_batch"], "test_batch", source)
    x_train, y_train = (np.concatenate(parts) for parts in zip(*train))
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


def _unpickle_batch(data, name, source):
    try:
        batch = _NumpyArrayUnpickler(io.BytesIO(data), encoding="bytes").load()
        pixels = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[b"labels"]).reshape(-1, 1)
    except Exception as error:  # Unpickling can fail in many ways; all mean "not a valid batch".
        raise DatasetError(
            f"{name} in {source} is not a valid CIFAR-10 batch ({type(error).__name__}: {error}). "
            f"Re-download {ARCHIVE_NAME} or point {DATA_ENV_VAR} at a good copy."
        ) from error
    if pixels.ndim != 2 or pixels.shape[1] != 3 * 32 * 32 or len(labels) != len(pixels):
        raise DatasetError(
            f"{name} in {source} holds data of shape {pixels.shape} and {len(labels)} labels; expected "
            f"(N, 3072) and N labels. Re-download {ARCHIVE_NAME}."
        )
    # Each row stores the 1024 red values, then green, then blue; Keras wants channels last.
    return pixels.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def _arrays_from_image_tree(images, source):
    """Decode ``<split>/<class>/<image>`` files, labelled by class name and shuffled with a fixed seed.

    The files are sorted first so that the result does not depend on archive or file-system order. The
    tree is grouped by class, so without the shuffle a first-40,000 / last-10,000 split would put whole
    classes into validation only.
    """
    samples = {split: [] for split in SPLITS}
    for name, data in sorted(images, key=lambda item: item[0]):
        split, class_name = PurePosixPath(name).parts[-3:-1]
        if class_name not in CLASS_NAMES:
            raise DatasetError(
                f"{source}: folder {split}/{class_name} is not a CIFAR-10 class. Class folders must be "
                f"named {', '.join(CLASS_NAMES)}; rename or remove it."
            )
        samples[split].append((name, CLASS_NAMES.index(class_name), data))
    rng = np.random.default_rng(SHUFFLE_SEED)
    arrays = {}
    for split in SPLITS:
        _require_all_classes(samples[split], split, source)
        x, y = _decode_images(samples[split], source)
        order = rng.permutation(len(x))
        arrays[f"x_{split}"], arrays[f"y_{split}"] = x[order], y[order]
    return arrays


def _require_all_classes(samples, split, source):
    present = {CLASS_NAMES[label] for _, label, _ in samples}
    missing = [name for name in CLASS_NAMES if name not in present]
    if missing:
        raise DatasetError(
            f"{source}: {split}/ has images for {len(present)} of the {len(CLASS_NAMES)} CIFAR-10 classes; "
            f"missing: {', '.join(missing)}. Every class needs a folder {split}/<class>/ with images."
        )


def _decode_images(samples, source):
    x = np.empty((len(samples), *IMAGE_SHAPE), dtype=np.uint8)
    y = np.empty((len(samples), 1), dtype=np.uint8)
    for index, (name, label, data) in enumerate(samples):
        x[index], y[index] = _decode_image(name, data, source), label
    return x, y


def eight_bit(image):
    """``image`` with 8-bit samples: 16-bit grayscale (PNG modes ``I;16``, ``I``) is scaled, not clipped to white."""
    if image.mode.startswith("I"):
        pixels = np.asarray(image, dtype=np.float64) / 257  # 65535 -> 255
        return Image.fromarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8), "L")
    return image


def _decode_image(name, data, source):
    try:
        with Image.open(io.BytesIO(data)) as image:
            pixels = np.asarray(eight_bit(image).convert("RGB"))
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as error:
        raise DatasetError(
            f"{name} in {source} is not a readable image ({error}). Replace or remove the file."
        ) from error
    if pixels.shape != IMAGE_SHAPE:
        raise DatasetError(
            f"{name} in {source} is {pixels.shape[1]}x{pixels.shape[0]} pixels; CIFAR-10 images are 32x32. "
            f"Resize the images to 32x32 or point {DATA_ENV_VAR} at the real CIFAR-10."
        )
    return pixels


_NPZ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)


def _read_npz(path):
    try:
        stored = np.load(path, allow_pickle=False)
    except _NPZ_ERRORS as error:
        raise _invalid_npz(path, error) from error
    if not isinstance(stored, np.lib.npyio.NpzFile):
        raise DatasetError(
            f"{path} holds a single array (a .npy file), not the four arrays of an .npz. Save them with "
            f"np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)."
        )
    try:
        with stored:
            missing = [key for key in ARRAY_KEYS if key not in stored.files]
            if missing:
                raise DatasetError(
                    f"{path} lacks the array(s) {', '.join(missing)} (it has: {', '.join(stored.files)}). "
                    f"Save it with np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)."
                )
            return {key: stored[key] for key in ARRAY_KEYS}
    except _NPZ_ERRORS as error:
        raise _invalid_npz(path, error) from error


def _invalid_npz(path, error):
    return DatasetError(
        f"{path} is truncated or not a valid .npz file ({error}). Re-create it with np.savez or point "
        f"{DATA_ENV_VAR} at a good copy."
    )


def _check_arrays(arrays, source):
    """Check shapes, dtypes and label range; return the arrays with labels as uint8 ``(N, 1)``."""
    for split in SPLITS:
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != IMAGE_SHAPE:
            raise DatasetError(
                f"{source}: x_{split} is {x.dtype} of shape {x.shape}; expected uint8 of shape "
                f"(N, 32, 32, 3). Convert it with x.astype('uint8') in channels-last order."
            )
        if not np.issubdtype(y.dtype, np.integer) or y.size != len(x):
            raise DatasetError(
                f"{source}: y_{split} is {y.dtype} of shape {y.shape}; expected {len(x)} integer labels, one "
                f"per image. Save them with y.astype('uint8')."
            )
        if y.size and (y.min() < 0 or y.max() >= len(CLASS_NAMES)):
            raise DatasetError(
                f"{source}: y_{split} has labels from {y.min()} to {y.max()}; CIFAR-10 labels are 0..9 "
                f"in the order of CLASS_NAMES."
            )
        arrays[f"y_{split}"] = y.reshape(-1, 1).astype(np.uint8)
    return arrays


# ---------------------------------------------------------------------------------------------- download

def _download(cache_dir, mirrors, verbose):
    """Return the official archive in ``cache_dir``, downloading it from the first mirror that works."""
    checked_mirrors = [(url, _parse_checksum(checksum)) for url, checksum in mirrors]
    target = cache_dir / ARCHIVE_NAME
    if target.exists():  # Only ever renamed into place after its checksum matched.
        return target
    with _download_lock(cache_dir, verbose):
        if target.exists():  # another process downloaded it while this one waited
            return target
        return _download_from_mirrors(checked_mirrors, target, verbose)


@contextlib.contextmanager
def _download_lock(cache_dir, verbose):
    """Let one process at a time download into ``cache_dir`` (two notebooks started together share it).

    The lock is taken on the folder itself, so no lock file is left behind.
    """
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=cache_dir).close()  # the download must be able to write here
        folder = os.open(cache_dir, os.O_RDONLY)
    except OSError as error:
        raise DatasetError(
            f"Cannot download CIFAR-10 into the cache folder {cache_dir}: it is not writable "
            f"({type(error).__name__}: {error}). Set {CACHE_ENV_VAR} to a folder you can write to (or pass "
            f"cache_dir=...), or {_HOW_TO_FIX[0].lower()}{_HOW_TO_FIX[1:]}"
        ) from error
    try:
        if fcntl is not None:
            try:
                fcntl.flock(folder, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                _say(verbose, f"Another process is downloading CIFAR-10 into {cache_dir}; waiting for it.")
                fcntl.flock(folder, fcntl.LOCK_EX)
        yield
    finally:
        os.close(folder)  # releases the lock


def _download_from_mirrors(checked_mirrors, target, verbose):
    failures = []
    for number, (url, checksum) in enumerate(checked_mirrors, start=1):
        try:
            _download_verified(url, checksum, target, verbose)
            return target
        except (OSError, http.client.HTTPException, ValueError) as error:
            # The partial file may be the cause (a bad checksum), so the next mirror starts from zero.
            target.with_name(target.name + ".part").unlink(missing_ok=True)
            reason = _describe_failure(error)
            failures.append(f"  {number}. {url}: {reason}")
            _say(verbose, f"Mirror {number}/{len(checked_mirrors)} failed ({url}): {reason}.")
    raise DatasetError(
        "Could not download CIFAR-10 from any mirror:\n" + ("\n".join(failures) or "  (no mirrors given)")
        + f"\n{_HOW_TO_FIX}"
    )


def _parse_checksum(checksum):
    """Split ``"md5:<hex>"`` or ``"sha256:<hex>"`` into ``(algorithm, hex)``."""
    algorithm, _, digest = str(checksum).partition(":")
    algorithm, digest = algorithm.lower(), digest.lower()
    length = hashlib.new(algorithm, usedforsecurity=False).digest_size * 2 if algorithm in CHECKSUM_ALGORITHMS else 0
    if not length or len(digest) != length or any(char not in "0123456789abcdef" for char in digest):
        raise ValueError(
            f"Checksum {checksum!r} must look like 'md5:<hex digest>' or 'sha256:<hex digest>': an algorithm "
            f"among {', '.join(CHECKSUM_ALGORITHMS)}, a colon and that algorithm's digest in hexadecimal "
            f"({length or 'its'} digits)."
        )
    return algorithm, digest


def _download_verified(url, checksum, target, verbose):
    """Stream ``url`` into ``<target>.part``, check it, then rename it to ``target``.

    A ``.part`` left by an interrupted run (a kernel restart, Ctrl-C) is resumed with an HTTP Range request.
    """
    algorithm, expected = checksum
    part = target.with_name(target.name + ".part")
    resume_from = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={resume_from}-"} if resume_from else {}
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S) as response:
        # 206 continues our partial file; 200 sends the whole file again, so start over. A server that
        # resumes at the wrong offset is caught by the checksum below.
        resuming = resume_from > 0 and response.status == 206
        _say(verbose, f"Downloading {url}" + (f" (resuming at byte {resume_from})" if resuming else ""))
        with open(part, "ab" if resuming else "wb") as output:
            shutil.copyfileobj(response, output, 1 << 20)
    actual = _file_digest(part, algorithm)
    if actual != expected:
        raise ValueError(f"{algorithm} checksum mismatch: got {actual}, expected {expected}")
    os.replace(part, target)


def _file_digest(path, algorithm):
    digest = hashlib.new(algorithm, usedforsecurity=False)  # md5 is allowed on FIPS systems only like this.
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _describe_failure(error):
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        return f"cannot connect ({error.reason})"
    return f"{type(error).__name__}: {error}"
