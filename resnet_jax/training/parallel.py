"""Data parallelism: one interface, :class:`DataParallel`, and one small class per mode.

Each mode places the state and the batches on the devices and wraps the per-device step
functions of ``step.py`` (collectives over the axis ``"batch"``); both donate the state (not
the few metric scalars: the loop waits on an earlier step's, see ``loop.MAX_STEPS_AHEAD``).

- :class:`ShardMapParallel` (``"shard_map"``, the default): ``jax.jit(jax.shard_map(...))``
  over a 1-D mesh of every device of every process. State is a replicated global ``jax.Array``
  tree; each process's local batch becomes one global ``jax.Array`` sharded over the mesh
  (multi-host friendly).
- :class:`PmapParallel` (``"pmap"``, what the Flax ImageNet example does): state has a leading
  axis of local devices; batches are reshaped to [local_devices, b / local_devices, ...].

``DataParallel(mode, devices)`` constructs the subclass registered for ``mode``; another layout
(say, a 2-D mesh that also shards the model) is one more subclass with its own ``mode``.
"""

from __future__ import annotations

import abc
import collections
import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from resnet_jax.training.step import AXIS, Batch, PyTree, TrainState, init_metrics

if TYPE_CHECKING:
    from resnet_jax.checkpoint import Checkpointer

PREFETCH = 2  # batches kept on the devices ahead of the step (Flax's prefetch_to_device default)


class DataParallel(abc.ABC):
    """Places state and batches, and wraps per-device step functions, for one parallel mode.

    ``DataParallel(mode, devices)`` returns the subclass whose ``mode`` is ``mode``
    (``"shard_map"`` or ``"pmap"``); ``devices`` defaults to the mode's
    :meth:`default_devices`. Subclasses implement the abstract methods; batch prefetching,
    metrics and restoring are shared.
    """

    mode: ClassVar[str]
    _modes: ClassVar[dict[str, type[DataParallel]]] = {}  # mode -> class, in definition order

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "mode" in vars(cls):  # a concrete mode: DataParallel(cls.mode) constructs it
            DataParallel._modes[cls.mode] = cls

    def __new__(cls, mode: str = "shard_map", devices: Sequence | None = None) -> DataParallel:
        if cls is DataParallel:  # the factory; a subclass called directly is itself
            modes = tuple(DataParallel._modes)
            if mode not in modes:
                names = " or ".join(repr(m) for m in modes)
                raise ValueError(f"parallel mode must be {names}, got {mode!r}")
            cls = DataParallel._modes[mode]
        return super().__new__(cls)

    def __init__(self, mode: str | None = None, devices: Sequence | None = None):
        if mode is not None and mode != self.mode:
            raise ValueError(f"{type(self).__name__} is mode {self.mode!r}, not {mode!r}")
        self.devices = list(devices or self.default_devices())
        self.mesh = Mesh(np.asarray(self.devices), (AXIS,))
        self.replicated = NamedSharding(self.mesh, P())
        self.sharded = NamedSharding(self.mesh, P(AXIS))
        self.num_local_devices = sum(d.process_index == jax.process_index() for d in self.devices)

    # ---- what each mode implements -------------------------------------------------------
    @staticmethod
    @abc.abstractmethod
    def default_devices() -> list:
        """The devices this mode spans when none are given."""

    @abc.abstractmethod
    def replicate(self, tree: PyTree) -> PyTree:
        """Host values (identical on every process) -> device state in this mode's layout."""

    @abc.abstractmethod
    def unreplicate(self, tree: PyTree) -> PyTree:
        """Device state -> one copy as numpy arrays (fetches to the host)."""

    @abc.abstractmethod
    def shard_batch(self, batch: Batch) -> Batch:
        """This process's local batch (numpy) -> the step's input layout."""

    @abc.abstractmethod
    def train_step(self, step_fn: Callable) -> Callable:
        """Jits ``step_fn(state, metrics, batch)`` data-parallel, donating state and metrics."""

    @abc.abstractmethod
    def eval_step(self, eval_fn: Callable) -> Callable:
        """Jits ``eval_fn(variables, batch)`` data-parallel; returns global sums."""

    @abc.abstractmethod
    def init_state(self, init_fn: Callable[[], TrainState]) -> TrainState:
        """Runs ``init_fn`` on device, directly into this mode's layout."""

    @abc.abstractmethod
    def replica_shapes(self, tree: PyTree) -> PyTree:
        """Shape/dtype structs of one replica of device ``tree`` (no copy to the host)."""

    # ---- shared ---------------------------------------------------------------------------
    def put_batch(self, batch: Batch) -> Batch:
        """One local batch on the devices, in the step's input layout (copies start now)."""
        return self.shard_batch(batch)

    def device_batches(self, batches: Iterable[Batch], size: int = PREFETCH) -> Iterator[Batch]:
        """``batches`` (this process's numpy batches) placed on the devices ``size`` ahead, so
        the next batches' host-to-device copies overlap the running step (what Flax's
        ``prefetch_to_device`` and big_vision's ``start_global`` do)."""
        queue: collections.deque = collections.deque()
        it = iter(batches)

        def enqueue(n: int) -> None:
            for batch in itertools.islice(it, n):
                queue.append(self.put_batch(batch))

        enqueue(size)
        while queue:
            batch = queue.popleft()
            enqueue(1)  # before yielding: ``size`` batches in flight while this one is used
            yield batch

    def init_metrics(self) -> dict:
        """Zeroed on-device metric sums (``step.init_metrics``) in this mode's layout."""
        return self.replicate(jax.device_get(init_metrics()))

    def state_shardings(self, abstract_state: PyTree) -> PyTree:
        """Shape/dtype/sharding structs of the state, as orbax restores it."""
        return jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=self.replicated),
            abstract_state,
        )

    def restore(self, ckpt: Checkpointer, abstract_state: PyTree, step: int) -> TrainState:
        """The state of ``step`` (shapes as ``abstract_state``) restored into this layout."""
        state, _ = ckpt.restore(self.state_shardings(abstract_state), step)
        return state


class ShardMapParallel(DataParallel):
    """``jax.jit(jax.shard_map(...))`` over a 1-D mesh of every device (all processes)."""

    mode = "shard_map"

    @staticmethod
    def default_devices() -> list:
        return jax.devices()

    def replicate(self, tree: PyTree) -> PyTree:
        def put(x):
            x = np.asarray(x)
            return jax.make_array_from_callback(x.shape, self.replicated, lambda idx: x[idx])

        return jax.tree.map(put, tree)

    def unreplicate(self, tree: PyTree) -> PyTree:
        return jax.tree.map(lambda x: np.asarray(x.addressable_shards[0].data), tree)

    def shard_batch(self, batch: Batch) -> Batch:
        # One global array from every process's local part; its copies start here.
        return jax.tree.map(
            lambda x: jax.make_array_from_process_local_data(self.sharded, np.asarray(x)), batch
        )

    def train_step(self, step_fn: Callable) -> Callable:
        # check_vma=False keeps pmap's semantics (no implicit psum of gradients of replicated
        # inputs), so one step function serves both modes; its pmeans make outputs replicated.
        mapped = jax.shard_map(
            step_fn,
            mesh=self.mesh,
            in_specs=(P(), P(), P(AXIS)),
            out_specs=(P(), P()),
            check_vma=False,
        )
        return jax.jit(mapped, donate_argnums=0)

    def eval_step(self, eval_fn: Callable) -> Callable:
        mapped = jax.shard_map(
            eval_fn, mesh=self.mesh, in_specs=(P(), P(AXIS)), out_specs=P(), check_vma=False
        )
        return jax.jit(mapped)

    def init_state(self, init_fn: Callable[[], TrainState]) -> TrainState:
        return jax.jit(init_fn, out_shardings=self.replicated)()

    def replica_shapes(self, tree: PyTree) -> PyTree:
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


class PmapParallel(DataParallel):
    """``jax.pmap`` over this process's devices: every array has a leading device axis."""

    mode = "pmap"

    @staticmethod
    def default_devices() -> list:
        return jax.local_devices()

    def replicate(self, tree: PyTree) -> PyTree:
        n = len(self.devices)

        def put(x):
            x = np.asarray(x)
            return jax.device_put(np.broadcast_to(x, (n, *x.shape)), self.sharded)

        return jax.tree.map(put, tree)

    def unreplicate(self, tree: PyTree) -> PyTree:
        return jax.tree.map(lambda x: np.asarray(x.addressable_shards[0].data)[0], tree)

    def shard_batch(self, batch: Batch) -> Batch:
        n = self.num_local_devices

        # create_dataset checks that batches split evenly over the devices (one check).
        return jax.tree.map(lambda x: x.reshape((n, x.shape[0] // n, *x.shape[1:])), batch)

    def put_batch(self, batch: Batch) -> Batch:
        # [devices, b, ...] split over the leading axis, as pmap takes it.
        return jax.tree.map(lambda x: jax.device_put(x, self.sharded), self.shard_batch(batch))

    def train_step(self, step_fn: Callable) -> Callable:
        return jax.pmap(step_fn, axis_name=AXIS, donate_argnums=0, devices=self.devices)

    def eval_step(self, eval_fn: Callable) -> Callable:
        pmapped = jax.pmap(eval_fn, axis_name=AXIS, devices=self.devices)
        # Every device holds the same (psummed) sums: return the first.
        return lambda v, b: jax.tree.map(lambda x: x[0], pmapped(v, b))

    def init_state(self, init_fn: Callable[[], TrainState]) -> TrainState:
        return self.replicate(jax.device_get(jax.jit(init_fn)()))

    def replica_shapes(self, tree: PyTree) -> PyTree:
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), tree)

    def restore(self, ckpt: Checkpointer, abstract_state: PyTree, step: int) -> TrainState:
        # No sharding describes the stacked layout: restore onto one device, then replicate.
        device = jax.local_devices()[0]
        target = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(
                x.shape, x.dtype, sharding=jax.sharding.SingleDeviceSharding(device)
            ),
            abstract_state,
        )
        state, _ = ckpt.restore(target, step)
        return self.replicate(jax.device_get(state))


def modes() -> tuple[str, ...]:
    """The registered parallel modes (config.parallel), in definition order."""
    return tuple(DataParallel._modes)
