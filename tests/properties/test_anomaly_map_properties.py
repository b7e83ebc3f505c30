"""Property tests of the anomaly-map and score functions (random shapes and values, hypothesis).

For finite inputs: no NaN or inf out, the map has the input size, every image score lies within its
map's range (``max`` is the map's maximum), and the per-pair distance is ``1 - cos`` in ``[0, 2]``.

Limits found by these tests (outside them the generator fails loudly or overflows, by design of float32):
the map must be larger than the blur radius (anomalib's ``GaussianBlur2d`` pads by reflection, which
raises for a smaller map), and with ``mse_weight > 0`` feature values must stay below ~1e19 (their
square overflows float32); the cosine term alone is finite up to the float32 maximum.
"""

from __future__ import annotations

import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from anomalib_classaware.models.components import AnomalyMapGenerator, cosine_distance_map

FAST = settings(max_examples=40, deadline=None, database=None)
FINITE = st.floats(min_value=-1e30, max_value=1e30).map(lambda value: float(torch.tensor(value)))


@st.composite
def feature_pairs(draw: st.DrawFn) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """1-3 (target, reconstruction) pairs of ``(B, C, h, w)`` maps of one batch size, finite values.

    Values are drawn from a few random magnitudes (including 0 and 1e30) so that zero vectors,
    constant maps and overflow-prone norms all occur.
    """
    batch = draw(st.integers(1, 3))
    pairs = []
    for _ in range(draw(st.integers(1, 3))):
        shape = (batch, draw(st.integers(1, 6)), draw(st.integers(1, 9)), draw(st.integers(1, 9)))
        seed = draw(st.integers(0, 2**31 - 1))
        scale = draw(st.sampled_from([0.0, 1e-30, 1e-3, 1.0, 1e3, 1e30]))
        generator = torch.Generator().manual_seed(seed)
        target = torch.randn(shape, generator=generator) * scale
        if draw(st.booleans()):
            reconstruction = target + torch.randn(shape, generator=generator) * draw(st.sampled_from([0.0, 1e-6, 1.0]))
        else:
            reconstruction = torch.full(shape, draw(FINITE))
        pairs.append((target.float(), reconstruction.float()))
    return [t for t, _ in pairs], [r for _, r in pairs]


@FAST
@given(
    pairs=feature_pairs(),
    height=st.integers(1, 48),
    width=st.integers(1, 48),
    reduction=st.sampled_from(["sum", "mean"]),
    sigma=st.sampled_from([0.0, 0.5, 4.0]),
    mse_weight=st.sampled_from([0.0, 1.0]),
    score_reduction=st.sampled_from(["max", "topk_mean"]),
    topk_ratio=st.floats(min_value=1e-4, max_value=1.0),
)
def test_map_has_input_size_and_finite_values_and_scores_lie_in_the_map_range(
    pairs, height, width, reduction, sigma, mse_weight, score_reduction, topk_ratio
) -> None:
    targets, reconstructions = pairs
    if mse_weight:
        assume(max(float(t.abs().max()) for t in (*targets, *reconstructions)) <= 1e15)
    generator = AnomalyMapGenerator(
        (height, width),
        reduction=reduction,
        sigma=sigma,
        mse_weight=mse_weight,
        score_reduction=score_reduction,
        topk_ratio=topk_ratio,
    )
    if sigma:
        assume(min(height, width) > max(generator.blur.height, generator.blur.width) // 2)
    anomaly_map, score = generator(targets, reconstructions)
    batch = targets[0].shape[0]
    assert anomaly_map.shape == (batch, 1, height, width)
    assert score.shape == (batch,)
    assert torch.isfinite(anomaly_map).all()
    assert torch.isfinite(score).all()
    assert anomaly_map.min() >= -1e-5
    if not mse_weight:
        assert anomaly_map.max() <= 2.0 * (len(targets) if reduction == "sum" else 1) + 1e-4
    flat = anomaly_map.flatten(1)
    low, high = flat.amin(dim=1), flat.amax(dim=1)
    tolerance = 1e-5 * high.abs().clamp(min=1)
    assert ((score >= low - tolerance) & (score <= high + tolerance)).all()
    if score_reduction == "max":
        assert torch.equal(score, high)


@FAST
@given(pairs=feature_pairs())
def test_cosine_distance_is_finite_and_within_zero_and_two(pairs) -> None:
    for target, reconstruction in zip(*pairs, strict=True):
        distance = cosine_distance_map(target, reconstruction)
        assert distance.shape == (target.shape[0], 1, *target.shape[2:])
        assert torch.isfinite(distance).all()
        assert distance.min() >= -1e-6
        assert distance.max() <= 2 + 1e-6


@FAST
@given(
    maps=st.integers(0, 2**31 - 1).map(
        lambda seed: torch.randn(2, 1, 7, 5, generator=torch.Generator().manual_seed(seed))
    ),
    topk_ratio=st.floats(min_value=1e-4, max_value=1.0),
)
def test_topk_mean_score_is_between_the_mean_and_the_max(maps, topk_ratio) -> None:
    generator = AnomalyMapGenerator((7, 5), sigma=0.0, score_reduction="topk_mean", topk_ratio=topk_ratio)
    score = generator.compute_score(maps)
    flat = maps.flatten(1)
    assert (score <= flat.amax(1) + 1e-6).all()
    assert (score >= flat.mean(1) - 1e-6).all()  # the mean of the k largest values is at least the mean
    assert generator.topk == max(1, int(topk_ratio * 35))
