"""Class-balanced batches: ``P`` categories x ``K`` images in every training batch.

Supervised contrastive terms (SupCon, Khosla et al., NeurIPS 2020; the global term of Fan et al.,
arXiv 2412.04769, Sec. 3.3) need images of the same class in a batch: with 8 categories in a
uniformly shuffled batch of 8, most anchors have no positive besides their own view. The
:class:`ClassBalancedBatchSampler` draws ``categories_per_batch`` distinct categories per batch
and ``images_per_category`` distinct images of each (the "P x K" sampling of metric learning).

- Categories are drawn by cycling through random permutations of all categories, so over an epoch
  every category is drawn equally often (small categories are oversampled, large ones
  undersampled); an image repeats only after every image of its category was used.
- An epoch has ``len(dataset) // (P * K * world_size)`` batches per process (at least one).
- Deterministic given ``seed`` and the epoch (``set_epoch``; Lightning calls it on the batch
  sampler's ``sampler`` every epoch).
- DDP: every process computes the same global sequence of batches and takes every
  ``world_size``-th one, so processes never share a batch; image indices repeat across processes
  only where a category has fewer images than its share of the epoch. When Lightning injects its
  ``DistributedSampler`` as ``sampler``, the process count, rank and epoch are read from it.
- ``K`` larger than a category's image count is an error: a batch never repeats an image (a
  repeated image would be its own positive, which a contrastive loss learns nothing from).

Models ask for it by a ``wants_class_balanced_batches`` attribute that is true (``ClassAwareRecon``
and ``ReContrast(class_aware=True)`` with dataset labels); our datamodules read it in
``train_dataloader`` (``balanced_batches=None``, the default) or follow ``balanced_batches=True/False``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import BatchSampler, DistributedSampler, Sampler

MODEL_ATTRIBUTE = "wants_class_balanced_batches"
"""The attribute by which a Lightning module asks our datamodules for class-balanced batches."""


class _EpochSampler(Sampler[int]):
    """``0 .. size-1`` in order; holds the epoch Lightning sets through ``set_epoch``."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.size))

    def __len__(self) -> int:
        return self.size


def balanced_batch_shape(
    batch_size: int,
    category_sizes: Sequence[int],
    categories_per_batch: int | None = None,
    images_per_category: int | None = None,
) -> tuple[int, int]:
    """``(P, K)`` for a batch of ``batch_size`` images over categories of the given sizes.

    Given both, they are used as they are (the batch then has ``P * K`` images). Given one, the other
    is ``batch_size`` divided by it. Given neither: the smallest ``K >= 2`` that divides ``batch_size``
    with ``2 <= P = batch_size / K <= len(category_sizes)`` and ``K <=`` the smallest category.

    Raises:
        ValueError: when no such split exists or a given value does not divide ``batch_size``.

    """
    count, smallest = len(category_sizes), min(category_sizes, default=0)
    if categories_per_batch is not None and images_per_category is not None:
        return int(categories_per_batch), int(images_per_category)
    given = categories_per_batch if categories_per_batch is not None else images_per_category
    if given is not None:
        name = "categories_per_batch" if categories_per_batch is not None else "images_per_category"
        if given < 1 or batch_size % given:
            msg = f"{name}={given} does not divide train_batch_size={batch_size}; give both `categories_per_batch` "
            msg += "and `images_per_category` (the batch then has their product of images)."
            raise ValueError(msg)
        other = batch_size // given
        return (given, other) if categories_per_batch is not None else (other, given)
    for images in range(2, batch_size // 2 + 1):
        if batch_size % images == 0 and 2 <= batch_size // images <= count and images <= smallest:
            return batch_size // images, images
    msg = (
        f"No class-balanced split of train_batch_size={batch_size} over {count} categories (smallest: {smallest} "
        "training images) into at least 2 categories x at least 2 images: set `categories_per_batch` and "
        "`images_per_category`, or `balanced_batches=False`."
    )
    raise ValueError(msg)


class ClassBalancedBatchSampler(BatchSampler):
    """Batches of ``categories_per_batch`` distinct categories x ``images_per_category`` distinct images.

    Args:
        category_ids: category of each dataset index.
        categories_per_batch: ``P``, distinct categories per batch.
        images_per_category: ``K``, distinct images per category and batch.
        seed: seed of the draws (with the epoch).
        sampler: holds the epoch (``set_epoch``); a ``DistributedSampler`` (Lightning injects one under
            DDP) also gives ``num_replicas`` and ``rank``. Defaults to an internal epoch holder.
        num_replicas: number of processes (overrides the sampler's). Defaults to 1.
        rank: this process's rank (overrides the sampler's). Defaults to 0.
        category_names: names of the category ids, for error messages.

    Raises:
        ValueError: on ``P`` or ``K`` below 1, ``P`` above the number of categories, ``K`` above the
            image count of a category, or a rank outside ``[0, num_replicas)``.

    """

    def __init__(
        self,
        category_ids: Sequence[int],
        categories_per_batch: int,
        images_per_category: int,
        seed: int = 0,
        sampler: Sampler[int] | None = None,
        num_replicas: int | None = None,
        rank: int | None = None,
        category_names: Sequence[str] | None = None,
    ) -> None:
        ids = [int(index) for index in category_ids]
        if categories_per_batch < 1 or images_per_category < 1:
            msg = f"categories_per_batch ({categories_per_batch}) and images_per_category ({images_per_category}) "
            msg += "must be at least 1."
            raise ValueError(msg)
        sizes = Counter(ids)

        def name(category: int) -> str:
            return repr(category_names[category]) if category_names is not None else f"id {category}"

        if categories_per_batch > len(sizes):
            msg = f"categories_per_batch={categories_per_batch} but the training data has {len(sizes)} categories."
            raise ValueError(msg)
        small = sorted((size, category) for category, size in sizes.items() if size < images_per_category)
        if small:
            listed = ", ".join(f"{name(category)} ({size})" for size, category in small)
            msg = (
                f"images_per_category={images_per_category} but some categories have fewer training images: "
                f"{listed}. A batch never repeats an image: pass images_per_category <= {small[0][0]}."
            )
            raise ValueError(msg)
        distributed = sampler if isinstance(sampler, DistributedSampler) else None
        self.num_replicas = int(num_replicas or (distributed.num_replicas if distributed is not None else 1))
        self.rank = int(rank if rank is not None else (distributed.rank if distributed is not None else 0))
        if not 0 <= self.rank < self.num_replicas:
            msg = f"rank {self.rank} is outside [0, {self.num_replicas})."
            raise ValueError(msg)
        super().__init__(sampler if sampler is not None else _EpochSampler(len(ids)), 1, drop_last=True)
        self.batch_size = categories_per_batch * images_per_category
        self.category_ids = ids
        self.categories_per_batch = int(categories_per_batch)
        self.images_per_category = int(images_per_category)
        self.seed = int(seed)
        self.category_names = list(category_names) if category_names is not None else None
        self._members = {category: [i for i, c in enumerate(ids) if c == category] for category in sorted(sizes)}

    @property
    def epoch(self) -> int:
        """The epoch whose batches :meth:`__iter__` yields."""
        return int(getattr(self.sampler, "epoch", 0))

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (Lightning calls ``set_epoch`` of :attr:`sampler`, which this forwards to)."""
        self.sampler.set_epoch(epoch)  # type: ignore[attr-defined]

    def __len__(self) -> int:
        """Batches per process and epoch."""
        return max(1, len(self.category_ids) // (self.batch_size * self.num_replicas))

    def global_batches(self, epoch: int) -> list[list[int]]:
        """The batches of every process for ``epoch``, in order (process ``r`` gets ``[r::num_replicas]``)."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        categories = list(self._members)
        pools: dict[int, list[int]] = {category: [] for category in categories}
        queue: list[int] = []
        batches = []
        for _ in range(len(self) * self.num_replicas):
            chosen: list[int] = []
            deferred: list[int] = []
            while len(chosen) < self.categories_per_batch:
                if not queue:
                    queue = [categories[i] for i in torch.randperm(len(categories), generator=generator).tolist()]
                category = queue.pop(0)
                (deferred if category in chosen else chosen).append(category)
            queue = deferred + queue
            batch = []
            for category in chosen:
                batch += self._take(pools, category, generator)
            batches.append(batch)
        return batches

    def _take(self, pools: dict[int, list[int]], category: int, generator: torch.Generator) -> list[int]:
        pool, members = pools[category], self._members[category]
        if len(pool) < self.images_per_category:  # refill with a new pass; keep the batch free of repeats
            fresh = [members[i] for i in torch.randperm(len(members), generator=generator).tolist()]
            left = set(pool)
            pool += [index for index in fresh if index not in left] + [index for index in fresh if index in left]
        taken, pools[category] = pool[: self.images_per_category], pool[self.images_per_category :]
        return taken

    def __iter__(self) -> Iterator[list[int]]:
        """This process's batches of the current epoch."""
        yield from self.global_batches(self.epoch)[self.rank :: self.num_replicas]
