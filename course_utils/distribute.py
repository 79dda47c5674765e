"""Data-parallel training on several accelerators, through Keras's own distribution support.

Build the model inside :func:`distribution_scope`; :func:`course_utils.training.train` then trains it where
it was built::

    with distribution_scope(config):  # the `full` profile on several GPUs: one replica of the model per device
        model = build_vit(**config.model)
    result = train(model, (x_train, y_train), (x_val, y_val), config, run_name="vit")

What the scope does depends on the backend and on how many devices (accelerators, or CPUs when there are
none) are visible:

* one device, or a profile other than ``full`` (unless ``enable=True``): nothing; the model trains as usual;
* JAX: ``keras.distribution.DataParallel`` over all the devices (variables replicated, every batch split
  along its first axis);
* TensorFlow: a ``tf.distribute.MirroredStrategy`` over all the devices (the model is built and compiled in
  ``strategy.scope()``);
* PyTorch: Keras has no multi-device training there; the scope prints so and the model trains on one device.

``profile.batch_size`` stays the *global* batch: each of ``n`` devices gets ``batch_size / n`` images a step,
so the learning rate and the schedule of the profile need no change.
"""

import contextlib
import dataclasses
import os
import platform

import keras

from course_utils.profiles import Profile

FULL_PROFILE = "full"
_BACKEND_NAMES = {"torch": "PyTorch", "jax": "JAX", "tensorflow": "TensorFlow"}
# Strategies and distributions are created once per set of devices: TensorFlow refuses to compile or fit a
# model under a strategy object other than the one it was built under.
_DISTRIBUTIONS = {}


@dataclasses.dataclass(frozen=True)
class DataParallelPlan:
    """Where a model lives and trains: one device, or a data-parallel replica on each of several devices.

    Attributes:
        backend: the Keras backend (``"jax"``, ``"tensorflow"``, ``"torch"``).
        devices: names of the devices the model's replicas live on, e.g. ``("gpu:0", "gpu:1")``; one name
            when the model is not data-parallel.
        distribution: the ``keras.distribution.DataParallel`` (JAX) or ``tf.distribute.MirroredStrategy``
            (TensorFlow) that spreads the work, or ``None`` on one device.
    """

    backend: str
    devices: tuple
    distribution: object = None

    @property
    def active(self):
        """Whether training is spread over several devices."""
        return self.distribution is not None

    @property
    def num_devices(self):
        return len(self.devices) if self.active else 1

    def scope(self):
        """A context manager that makes this plan current (a no-op on one device)."""
        return self.distribution.scope() if self.active else contextlib.nullcontext()

    def per_device_batch(self, batch_size):
        """``batch_size`` (the global batch) divided among the devices; raises if it does not divide evenly."""
        return _split_batch(batch_size, self.num_devices)

    def even_split(self, *arrays):
        """Cut ``arrays`` (equal first dimensions ``n``) to a multiple of the device count where needed.

        JAX shards every batch, the last, smaller one included, evenly over the devices, so on JAX the last
        ``n % num_devices`` samples are dropped; TensorFlow splits uneven batches itself. Returns the arrays
        (shapes ``(n', ...)``) and how many samples were dropped.
        """
        count = len(arrays[0])
        keep = count - count % self.num_devices if self.active and self.backend == "jax" else count
        return tuple(array[:keep] for array in arrays), count - keep

    def describe(self):
        """One line naming the devices and the Keras or TensorFlow mechanism (``"one device"`` when not active)."""
        if not self.active:
            return "one device"
        api = "keras.distribution" if self.backend == "jax" else "tf.distribute"
        return (
            f"data parallel over {self.num_devices} devices ({', '.join(self.devices)}) with "
            f"{api}.{type(self.distribution).__name__}"
        )


def describe_device():
    """One line naming the accelerator (or CPU) the current Keras backend computes on."""
    backend = keras.backend.backend()
    names = []
    if backend == "jax":
        import jax

        names = [device.device_kind for device in jax.devices() if device.platform != "cpu"]
    elif backend == "torch":
        import torch

        names = [torch.cuda.get_device_name(index) for index in range(torch.cuda.device_count())]
    else:
        names = [device for device in keras.distribution.list_devices() if not device.lower().startswith("cpu")]
    if not names:
        return f"CPU ({os.cpu_count()} cores, {platform.machine()})"
    return f"{len(names)} x {names[0]}" if len(names) > 1 else names[0]


def visible_devices():
    """Names of the devices a batch could be spread over: the accelerators, or the CPU(s) if there are none.

    JAX and TensorFlow report what ``keras.distribution.list_devices()`` reports (``"gpu:0"``, ``"cpu:0"``,
    ...); PyTorch reports ``"cuda:<i>"`` for each CUDA device, or ``"cpu"``.
    """
    backend = keras.backend.backend()
    if backend == "torch":
        return _torch_devices()
    if backend in ("jax", "tensorflow"):
        return [str(device) for device in keras.distribution.list_devices()]
    return ["cpu"]


@contextlib.contextmanager
def distribution_scope(profile, enable=None, verbose=True):
    """Build models inside this scope so that they train data-parallel on every visible device.

    It activates only when several devices are visible and ``enable`` allows it: by default (``None``) for
    the ``full`` profile only, ``True`` for any profile (to try it on a small configuration), ``False``
    never. Models built inside keep their placement; :func:`course_utils.training.train` finds it with
    :func:`plan_of` and compiles and fits them in the same scope, so nothing else changes in a notebook.

    Args:
        profile: a :class:`course_utils.training.Profile`; its ``batch_size`` is the global batch and must be
            a multiple of the number of devices when the scope activates.
        enable: ``None`` (only for ``full``), ``True`` or ``False``.
        verbose: print one line saying which devices are used (nothing is printed on one device).

    Yields:
        The :class:`DataParallelPlan` in force inside the scope.
    """
    plan = data_parallel_plan(profile, enable=enable, verbose=verbose)
    with plan.scope():
        yield plan


def data_parallel_plan(profile, enable=None, verbose=True):
    """The :class:`DataParallelPlan` that :func:`distribution_scope` activates (arguments as there)."""
    _require_profile(profile)
    if enable is not None and not isinstance(enable, bool):
        raise TypeError(f"enable must be None (only for the full profile), True or False, got {enable!r}.")
    backend = keras.backend.backend()
    devices = tuple(visible_devices())
    say = print if verbose else (lambda *args, **kwargs: None)
    one_device = DataParallelPlan(backend, devices[:1])
    if len(devices) < 2:
        return one_device
    if backend not in ("jax", "tensorflow"):
        say(
            f"{len(devices)} devices visible, but Keras has no multi-device training on the "
            f"{_BACKEND_NAMES.get(backend, backend)} backend: training uses one device ({devices[0]})."
        )
        return one_device
    if not (profile.name == FULL_PROFILE if enable is None else enable):
        say(
            f"{len(devices)} devices visible; profile {profile.name!r} trains on one ({devices[0]}). "
            f"Data parallelism is for the {FULL_PROFILE!r} profile (enable=True uses it for any)."
        )
        return one_device
    per_device = _split_batch(profile.batch_size, len(devices))  # before creating anything: may raise
    plan = DataParallelPlan(backend, devices, _distribution_for(backend, devices))
    say(f"{plan.describe()}: global batch {profile.batch_size} = {plan.num_devices} x {per_device} per device")
    return plan


def plan_of(model):
    """The :class:`DataParallelPlan` a model was built under, so that it is compiled and trained in it.

    TensorFlow: the strategy Keras recorded when the model was created (``model.distribute_strategy``).
    JAX: the distribution set globally with ``keras.distribution.set_distribution``, if any, or else the
    devices the model's variables are replicated on. PyTorch: always one device.
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"plan_of expects a keras.Model, got {type(model).__name__}.")
    backend = keras.backend.backend()
    if backend == "tensorflow":
        strategy = model.distribute_strategy
        if strategy.num_replicas_in_sync > 1:
            devices = tuple(_short_tf_name(name) for name in strategy.extended.worker_devices)
            return DataParallelPlan(backend, devices, strategy)
        return DataParallelPlan(backend, tuple(visible_devices()[:1]))
    if backend == "jax":
        current = keras.distribution.distribution()
        if current is not None:
            return DataParallelPlan(backend, tuple(str(d) for d in current.device_mesh.devices.flat), current)
        sharding = getattr(model.weights[0].value, "sharding", None) if model.weights else None
        mesh = getattr(sharding, "mesh", None)
        if mesh is None or mesh.devices.size < 2:
            return DataParallelPlan(backend, tuple(visible_devices()[:1]))
        if len(mesh.axis_names) != 1:
            raise ValueError(
                f"The model's variables are laid out on a {dict(mesh.shape)} device mesh; train() only runs "
                "data-parallel models (built inside distribution_scope). Set your distribution with "
                "keras.distribution.set_distribution and call model.fit yourself."
            )
        devices = tuple(f"{device.platform}:{device.id}" for device in mesh.devices.flat)
        return DataParallelPlan(backend, devices, _distribution_for(backend, devices))
    return DataParallelPlan(backend, tuple(visible_devices()[:1]))



def _split_batch(batch_size, count):
    if batch_size % count:
        raise ValueError(
            f"A batch of {batch_size} images cannot be split evenly over {count} devices: "
            f"use a batch_size that is a multiple of {count}."
        )
    return batch_size // count


def _distribution_for(backend, devices):
    key = (backend, devices)
    if key not in _DISTRIBUTIONS:
        if backend == "jax":
            _DISTRIBUTIONS[key] = keras.distribution.DataParallel(devices=list(devices))
        else:
            _DISTRIBUTIONS[key] = _mirrored_strategy(devices)
    return _DISTRIBUTIONS[key]


def _mirrored_strategy(devices):
    # Keras 3 trains on several devices with TensorFlow only through tf.distribute (its own
    # keras.distribution API is JAX-only), so TensorFlow is imported here and nowhere else.
    import tensorflow as tf

    return tf.distribute.MirroredStrategy(list(devices))


def _torch_devices():
    # Keras has no device listing on the PyTorch backend, so ask PyTorch itself.
    import torch

    count = torch.cuda.device_count()
    return [f"cuda:{index}" for index in range(count)] if count else ["cpu"]


def _short_tf_name(name):
    """``/job:localhost/replica:0/task:0/device:GPU:1`` -> ``gpu:1``."""
    return name.rsplit("device:", 1)[-1].lower()


def _require_profile(profile):
    if not isinstance(profile, Profile):
        raise TypeError(
            f"profile must be a course_utils.Profile (e.g. select_profile(PROFILES, 'full')), "
            f"got {type(profile).__name__}."
        )
