"""Detection metrics: image and pixel AUROC, AUPRO (MVTec AD's per-region overlap) and F1-max.

Written in torch so that pixel metrics over millions of pixels run on the GPU in milliseconds; each one is tested
against scikit-learn or hand-computed cases.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

# The structuring element of 8-connectivity for ndimage.label (its default is 4-connectivity).
_EIGHT_NEIGHBOURS = np.ones((3, 3), dtype=int)


def _finite(scores: Tensor) -> Tensor:
    """The scores, flattened as float64; ValueError if any is NaN or infinite (sorting would rank NaN highest and
    return a number that means nothing)."""
    scores = scores.flatten().double()
    if not torch.isfinite(scores).all():
        raise ValueError("the scores hold NaN or infinite values; metrics need finite ones")
    return scores


def _flat(scores: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    scores, labels = _finite(scores), labels.flatten().bool().to(scores.device)
    if scores.numel() != labels.numel():
        raise ValueError(f"{scores.numel()} scores but {labels.numel()} labels")
    return scores, labels


def binary_auroc(scores: Tensor, labels: Tensor) -> float:
    """Area under the ROC curve (ties count one half), by the Mann-Whitney rank sum. NaN if one class is missing."""
    scores, labels = _flat(scores, labels)
    positives = int(labels.sum())
    negatives = labels.numel() - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    ordered, order = scores.sort()
    _, group, counts = torch.unique_consecutive(ordered, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    average_rank = (ends - counts + 1 + ends) / 2.0  # 1-based mean rank of each group of tied scores
    positive_rank_sum = average_rank[group][labels[order]].sum().item()
    return (positive_rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives)


def _last_of_tied(ordered: Tensor) -> Tensor:
    """For sorted scores: True at the last index of each group of equal scores, the only real thresholds."""
    last = torch.ones_like(ordered, dtype=torch.bool)
    last[:-1] = ordered[1:] != ordered[:-1]
    return last


def f1_max(scores: Tensor, labels: Tensor) -> float:
    """The best F1 score over all thresholds (predict anomalous when score >= threshold). NaN if one class is
    missing, as AUROC: without normal images calling everything anomalous scores a perfect 1, which measures nothing
    and would enter a mean over categories that AUROC leaves the category out of."""
    scores, labels = _flat(scores, labels)
    positives = int(labels.sum())
    if positives == 0 or positives == labels.numel():
        return float("nan")
    ordered, order = scores.sort(descending=True)
    true_positives = labels[order].double().cumsum(0)
    predicted = torch.arange(1, scores.numel() + 1, device=scores.device, dtype=torch.float64)
    last_of_group = _last_of_tied(ordered)
    tp, n = true_positives[last_of_group], predicted[last_of_group]
    return (2 * tp / (n + positives)).max().item()


def region_labels(masks: Tensor) -> Tensor:
    """Connected defect regions of binary masks [N, 1, H, W] (8-connectivity: diagonal neighbours belong to one
    region, as in MVTec AD's reference evaluation code), each numbered uniquely over the whole set (0 = background).
    Returns int64 [N, 1, H, W] on the masks' device."""
    labelled = np.zeros(masks.shape, dtype=np.int64)
    offset = 0
    for i, mask in enumerate(masks.detach().cpu().numpy()):
        regions, count = ndimage.label(mask[0] > 0.5, structure=_EIGHT_NEIGHBOURS)
        labelled[i, 0] = np.where(regions > 0, regions + offset, 0)
        offset += count
    return torch.from_numpy(labelled).to(masks.device)


def aupro(anomaly_maps: Tensor, masks: Tensor, *, fpr_limit: float = 0.3, regions: Tensor | None = None) -> float:
    """Normalised area under the per-region-overlap curve up to ``fpr_limit`` false-positive rate (MVTec AD).

    anomaly_maps, masks: [N, 1, H, W]. PRO(t) is the mean over all defect regions of the fraction of the region above
    threshold t; FPR(t) the fraction of defect-free pixels above t. ``regions``: precomputed ``region_labels(masks)``.
    Returns NaN when there is no defect region.
    """
    regions = region_labels(masks) if regions is None else regions
    scores = _finite(anomaly_maps)
    region = regions.flatten().to(scores.device)
    region_count = int(region.max())
    background = region == 0
    if region_count == 0 or background.all() or not background.any():
        return float("nan")
    sizes = torch.bincount(region, minlength=region_count + 1).double()
    # Each defect pixel adds 1 / (its region's size * number of regions) to the mean overlap once it is above t.
    weight = torch.where(background, torch.zeros_like(scores), 1.0 / (sizes[region] * region_count))
    ordered, order = scores.sort(descending=True)
    fpr = background[order].double().cumsum(0) / background.sum()
    pro = weight[order].cumsum(0)
    last_of_group = _last_of_tied(ordered)
    zero = torch.zeros(1, dtype=torch.float64, device=scores.device)
    fpr, pro = torch.cat([zero, fpr[last_of_group]]), torch.cat([zero, pro[last_of_group]])
    # Cut the curve at fpr_limit, interpolating the point on it.
    inside = int((fpr <= fpr_limit).sum())
    x, y = fpr[:inside], pro[:inside]
    if inside < fpr.numel() and fpr[inside] > fpr[inside - 1]:
        share = (fpr_limit - fpr[inside - 1]) / (fpr[inside] - fpr[inside - 1])
        x = torch.cat([x, fpr.new_tensor([fpr_limit])])
        y = torch.cat([y, (pro[inside - 1] + share * (pro[inside] - pro[inside - 1])).view(1)])
    return (torch.trapezoid(y, x) / fpr_limit).item()
