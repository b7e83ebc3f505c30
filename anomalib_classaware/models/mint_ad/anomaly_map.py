"""MINT-AD anomaly map: UniAD's per-position L2 distance between features and their reconstruction.

UniAD (You et al., NeurIPS 2022, Sec. 3.5) scores each position by the L2 norm of the
reconstruction difference over channels; the map is up-sampled bilinearly to the input size. We
then blur it (Gaussian, sigma 4) and take the maximum as the image score, as every model of this
package does; both steps come from the shared :class:`AnomalyMapGenerator`.
"""

from __future__ import annotations

from torch import Tensor

from anomalib_classaware.models.components import AnomalyMapGenerator


class L2AnomalyMapGenerator(AnomalyMapGenerator):
    """:class:`AnomalyMapGenerator` whose per-pair map is ``||target - reconstruction||_2`` over channels."""

    def pair_map(self, target: Tensor, reconstruction: Tensor) -> Tensor:
        """``(B, 1, h, w)`` L2 distance over channels."""
        return (target - reconstruction).pow(2).sum(dim=1, keepdim=True).sqrt()
