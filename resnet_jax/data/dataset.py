"""``Dataset``: what ``create_dataset`` returns, an iterable of numpy batches plus what the
trainer needs to know about them; an image that fails to decode becomes a ``CorruptImageError``
naming the files."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from resnet_jax.data import sources
from resnet_jax.data.host_tf import tf
from resnet_jax.data.sources import CorruptImageError, IndexSource, Source

# Above this many examples a failed decode is not searched for its file (one decode pass).
_DIAGNOSE_MAX_EXAMPLES = 200_000


class Dataset:
    """An iterable of batches from ``create_dataset``, plus what the trainer needs to know.

    Attributes: ``num_classes``, ``class_names``, ``num_examples`` (whole split, all processes),
    ``steps_per_epoch`` (train: ``num_examples // global_batch_size``; eval: batches covering the
    split once), ``global_batch_size``, ``local_batch_size``, ``skipped_files`` (files skipped
    with ``skip_corrupt``), ``normalization`` (the statistics applied, see
    ``normalization_stats``), ``device_steps`` (uint8 output: what ``data.device.finish`` still
    applies on the device, e.g. ``{"cifar_pad": 4}``; None for normalised output),
    ``size_schedule`` (train with progressive resizing: ((first batch, size), ...) as
    ``create_dataset`` resolved it; () otherwise), ``tf_dataset`` (the underlying
    tf.data.Dataset of tensors).

    Iterating yields dicts of numpy arrays local to this process (L = local batch): ``"image"``:
    [L, H, W, 3] float32/bfloat16, normalised (uint8 pixels with ``dtype="uint8"``, plus
    ``crop_yx``/``flip`` for the CIFAR preset and ``lighting`` for the paper's lighting;
    "ten_crop": [L, 10, H, W, 3]; the views are ordered top-left, top-right, bottom-left,
    bottom-right, centre, then the same five mirrored; "multi_scale": a tuple with one [L, s, s,
    3] array per scale, smallest first, sizes in ``view_sizes``); ``"label"``: int32 [L];
    ``"mask"``: bool [L], True for real examples (False only for the padding of the last
    evaluation batch). Training iterates forever; evaluation yields exactly ``steps_per_epoch``
    batches on every process.
    """

    def __init__(
        self,
        tf_dataset: tf.data.Dataset,
        *,
        source: Source,
        num_examples: int,
        steps_per_epoch: int,
        global_batch_size: int,
        local_batch_size: int,
        view_sizes: tuple[int, ...],
        normalization: dict[str, Any],
        device_steps: dict[str, Any] | None = None,
        size_schedule: tuple[tuple[int, int], ...] = (),
    ):
        self.tf_dataset = tf_dataset
        self.source = source
        self.class_names: list[str] = list(source.class_names)
        self.num_classes: int = len(self.class_names)
        self.num_examples = num_examples
        self.steps_per_epoch = steps_per_epoch
        self.global_batch_size = global_batch_size
        self.local_batch_size = local_batch_size
        self.view_sizes = view_sizes
        self.normalization = normalization
        self.device_steps = device_steps
        self.size_schedule = size_schedule
        self.skipped_files: list[str] = list(getattr(source, "skipped_files", []))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        it = self.tf_dataset.as_numpy_iterator()
        while True:
            try:
                batch = next(it)
            except StopIteration:
                return
            except tf.errors.InvalidArgumentError as e:
                raise self._decode_error(e) from e
            yield batch

    def _decode_error(self, err: Exception) -> Exception:
        source = self.source
        msg = str(err).strip().splitlines()[0][:300]
        if isinstance(source, IndexSource) and len(source) <= _DIAGNOSE_MAX_EXAMPLES:
            bad = [source.describe(i) for i in sources.find_undecodable(source)]
            if bad:
                shown = ", ".join(repr(b) for b in bad[:5])
                return CorruptImageError(
                    f"{len(bad)} image(s) cannot be decoded: {shown}"
                    f"{' ...' if len(bad) > 5 else ''}. Remove them or pass skip_corrupt=True."
                )
        return CorruptImageError(
            f"an image of {source.name} cannot be decoded ({msg}); list the bad files with "
            "resnet_jax.data.find_corrupt_images(root, split) or pass skip_corrupt=True"
        )
