"""Image / pixel metrics against scikit-learn and hand-computed cases."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from sklearn.metrics import precision_recall_curve, roc_auc_score

from i3ad.metrics import aupro, binary_auroc, f1_max, region_labels


def _sklearn_f1_max(scores: np.ndarray, labels: np.ndarray) -> float:
    precision, recall, _ = precision_recall_curve(labels, scores)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return float(f1.max())


# --- AUROC and F1-max ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("levels", [3, 10, None])  # None: continuous scores, else heavy ties
def test_auroc_and_f1_match_sklearn(seed, levels):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.rand(400, generator=generator) < 0.3
    scores = torch.rand(400, generator=generator) + 0.4 * labels
    if levels is not None:
        scores = (scores * levels).floor() / levels
        assert len(scores.unique()) < 20  # there are ties
    expected_auroc = roc_auc_score(labels.numpy(), scores.numpy())
    expected_f1 = _sklearn_f1_max(scores.numpy(), labels.numpy())
    assert binary_auroc(scores, labels) == pytest.approx(expected_auroc, abs=1e-12)
    assert f1_max(scores, labels) == pytest.approx(expected_f1, abs=1e-12)


def test_metrics_accept_maps_and_float_labels():
    generator = torch.Generator().manual_seed(3)
    maps = torch.rand(4, 1, 8, 8, generator=generator)
    masks = (torch.rand(4, 1, 8, 8, generator=generator) < 0.2).float()
    expected = roc_auc_score(masks.flatten().numpy(), maps.flatten().numpy())
    assert binary_auroc(maps, masks) == pytest.approx(expected, abs=1e-12)
    with pytest.raises(ValueError, match="labels"):
        binary_auroc(torch.rand(5), torch.ones(4))


@pytest.mark.parametrize(
    ("scores", "labels", "expected"),
    [
        ([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1], 0.75),  # 3 of the 4 (positive, negative) pairs ordered right
        ([1.0, 2.0, 3.0], [0, 1, 1], 1.0),
        ([3.0, 2.0, 1.0], [0, 1, 1], 0.0),
        ([0.5, 0.5], [0, 1], 0.5),  # a tie counts one half
        ([0.2, 0.5, 0.5, 0.9], [0, 0, 1, 1], 0.875),  # pairs: (0.5 vs 0.2) 1, (0.5 vs 0.5) 1/2, 0.9: 1, 1
    ],
)
def test_auroc_hand_computed(scores, labels, expected):
    assert binary_auroc(torch.tensor(scores), torch.tensor(labels)) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    ("scores", "labels", "expected"),
    [
        # thresholds 0.9: F1 2/3; 0.8: 1/2; 0.7: 2*2/(3+2) = 0.8; 0.6: 4/6
        ([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0], 0.8),
        # the tie at 0.9 cannot be split: best is 2*1/(2+1) = 2/3, not 1
        ([0.9, 0.9, 0.1], [1, 0, 0], 2 / 3),
        ([0.1, 0.2, 0.9], [0, 0, 1], 1.0),
        ([0.3, 0.3, 0.3], [1, 0, 1], 0.8),  # one threshold: predict all, 2 * 2 / (3 + 2)
    ],
)
def test_f1_max_hand_computed(scores, labels, expected):
    assert f1_max(torch.tensor(scores), torch.tensor(labels)) == pytest.approx(expected, abs=1e-12)


def test_metrics_are_nan_when_a_class_is_missing():
    scores = torch.tensor([0.1, 0.5, 0.9])
    assert math.isnan(binary_auroc(scores, torch.zeros(3)))
    assert math.isnan(binary_auroc(scores, torch.ones(3)))
    assert math.isnan(f1_max(scores, torch.zeros(3)))
    assert math.isnan(f1_max(scores, torch.ones(3)))
    assert math.isnan(aupro(torch.rand(2, 1, 4, 4), torch.zeros(2, 1, 4, 4)))
    assert math.isnan(aupro(torch.rand(1, 1, 4, 4), torch.ones(1, 1, 4, 4)))


# --- regions and AUPRO ---------------------------------------------------------------------------------------------


def test_region_labels_are_unique_across_images_and_8_connected():
    masks = torch.zeros(3, 1, 5, 5)
    masks[0, 0, 0, 0:2] = 1  # region A
    masks[0, 0, 3:5, 3:5] = 1  # region B
    masks[1, 0, 1, 1] = 1  # diagonal neighbours: one region (8-connectivity, as MVTec AD's evaluation)
    masks[1, 0, 2, 2] = 1
    masks[1, 0, 4, 0] = 1  # apart from them: a region of its own
    masks[2, 0, 2, :] = 1  # one line
    labels = region_labels(masks)
    assert labels.dtype == torch.int64 and labels.shape == masks.shape
    assert torch.equal(labels > 0, masks > 0)
    assert sorted(labels.unique().tolist()) == [0, 1, 2, 3, 4, 5]
    assert len(labels[0, 0, 0, 0:2].unique()) == 1
    assert len(labels[0, 0, 3:5, 3:5].unique()) == 1
    assert labels[0, 0, 0, 0] != labels[0, 0, 3, 3]
    assert labels[1, 0, 1, 1] == labels[1, 0, 2, 2] != labels[1, 0, 4, 0]
    assert len(labels[2, 0, 2, :].unique()) == 1
    # No label is shared between two images.
    per_image = [set(labels[i].unique().tolist()) - {0} for i in range(3)]
    assert not (per_image[0] & per_image[1] or per_image[0] & per_image[2] or per_image[1] & per_image[2])


def _two_region_case():
    """2 images of 4 x 4. Region R1 (image 0, 2 px) scores 0.9; region R2 (image 1, 4 px) scores 0.8, 0.8, 0.5, 0.5.
    Of the 26 defect-free pixels one scores 0.85, twelve 0.5 and thirteen 0."""
    maps = torch.zeros(2, 1, 4, 4)
    masks = torch.zeros(2, 1, 4, 4)
    masks[0, 0, 0, 0:2] = 1
    maps[0, 0, 0, 0:2] = 0.9
    masks[1, 0, 2:4, 2:4] = 1
    maps[1, 0, 2, 2:4] = 0.8
    maps[1, 0, 3, 2:4] = 0.5
    maps[0, 0, 3, 3] = 0.85
    background = [(0, r, c) for r in range(4) for c in range(4) if masks[0, 0, r, c] == 0 and (r, c) != (3, 3)]
    background += [(1, r, c) for r in range(4) for c in range(4) if masks[1, 0, r, c] == 0]
    assert len(background) == 25
    for i, r, c in background[:12]:
        maps[i, 0, r, c] = 0.5
    return maps, masks


def _area(points, limit):
    """Exact area under a piecewise linear curve [(x, y), ...] from 0 to ``limit``, over ``limit``."""
    total = Fraction(0)
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        if x0 >= limit:
            break
        if x1 > limit:
            y1 = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            x1 = limit
        total += (x1 - x0) * (y0 + y1) / 2
    return float(total / limit)


def test_aupro_two_regions_hand_computed():
    maps, masks = _two_region_case()
    f = Fraction
    # Thresholds from the top, with (FPR, PRO) after each:
    #   0.9  : R1 fully in         -> (0, 1/2)        [PRO = mean over the 2 regions of their covered share]
    #   0.85 : 1 defect-free pixel -> (1/26, 1/2)
    #   0.8  : half of R2          -> (1/26, 3/4)
    #   0.5  : 12 free + R2 rest   -> (13/26, 1)      [a tie: one point, a sloped segment]
    #   0    : 13 free             -> (1, 1)
    curve = [(f(0), f(0)), (f(0), f(1, 2)), (f(1, 26), f(1, 2)), (f(1, 26), f(3, 4)), (f(1, 2), f(1)), (f(1), f(1))]
    for limit in (f(3, 10), f(1, 10), f(2, 5), f(1, 2), f(7, 10), f(1)):
        expected = _area(curve, limit)
        assert aupro(maps, masks, fpr_limit=float(limit)) == pytest.approx(expected, abs=1e-9), limit
    # Spelled out for the default cut-off 0.3: interpolated PRO at FPR 0.3 on the segment (1/26, 3/4)-(1/2, 1).
    y_cut = f(3, 4) + f(1, 4) * (f(3, 10) - f(1, 26)) / (f(1, 2) - f(1, 26))
    by_hand = (f(1, 26) * f(1, 2) + (f(3, 10) - f(1, 26)) * (f(3, 4) + y_cut) / 2) / f(3, 10)
    assert aupro(maps, masks) == pytest.approx(float(by_hand), abs=1e-9)
    assert aupro(maps, masks) == pytest.approx(3649 / 4680, abs=1e-9)  # = 0.7797...


def test_aupro_perfect_and_inverted_maps():
    masks = torch.zeros(3, 1, 8, 8)
    masks[0, 0, 1:3, 1:4] = 1
    masks[1, 0, 5:8, 0:2] = 1
    masks[1, 0, 0, 7] = 1
    perfect = masks.clone()
    for limit in (0.05, 0.3, 1.0):
        assert aupro(perfect, masks, fpr_limit=limit) == pytest.approx(1.0, abs=1e-12)
        assert aupro(1.0 - masks, masks, fpr_limit=limit) == pytest.approx(0.0, abs=1e-12)
    # Random maps: strictly in between, and the precomputed regions give the same value.
    noise = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    value = aupro(noise, masks)
    assert 0.0 < value < 1.0
    assert aupro(noise, masks, regions=region_labels(masks)) == value


def _reference_aupro(maps: np.ndarray, masks: np.ndarray, limit: float) -> float:
    """Brute force: PRO and FPR at every distinct threshold, counting pixels region by region."""
    labels = region_labels(torch.from_numpy(masks)).numpy()
    regions = [labels == r for r in range(1, labels.max() + 1)]
    background = labels == 0
    points = [(0.0, 0.0)]
    for t in sorted(np.unique(maps), reverse=True):
        above = maps >= t
        fpr = (above & background).sum() / background.sum()
        pro = np.mean([(above & region).sum() / region.sum() for region in regions])
        points.append((fpr, pro))
    xs, ys = [], []
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        if not xs:
            xs, ys = [x0], [y0]
        if x1 > limit:
            if x0 < limit:
                xs.append(limit)
                ys.append(y0 + (y1 - y0) * (limit - x0) / (x1 - x0))
            break
        xs.append(x1)
        ys.append(y1)
    return float(np.trapezoid(ys, xs) / limit)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("limit", [0.05, 0.3, 1.0])
def test_aupro_matches_brute_force(seed, limit):
    generator = torch.Generator().manual_seed(seed)
    masks = torch.zeros(4, 1, 12, 12)
    masks[0, 0, 2:5, 2:6] = 1
    masks[1, 0, 8:11, 1:3] = 1
    masks[1, 0, 0:2, 9:12] = 1
    masks[3, 0, 5:7, 5:7] = 1
    # Quantised scores (ties), a little higher on defects.
    maps = ((torch.rand(4, 1, 12, 12, generator=generator) + 0.3 * masks) * 8).floor() / 8
    expected = _reference_aupro(maps.numpy().astype(np.float64), masks.numpy(), limit)
    assert aupro(maps, masks, fpr_limit=limit) == pytest.approx(expected, abs=1e-9)


def test_metrics_by_defect_score_each_type_against_the_normal_images():
    from i3ad.evaluation import TestSet, metrics_by_defect

    # 2 normal images, a "small" defect the map finds and a "large" one it misses (the map is high elsewhere).
    masks = torch.zeros(4, 1, 8, 8)
    masks[2, :, 1:3, 1:3] = 1
    masks[3, :, :, :6] = 1
    maps = torch.zeros(4, 1, 8, 8)
    maps[2, :, 1:3, 1:3] = 1.0
    maps[3, :, :, 6:] = 0.5
    labels = torch.tensor([0, 0, 1, 1])
    test = TestSet(torch.zeros(4, 1, 8, 8), labels, masks, defects=["good", "good", "small", "large"])
    table = metrics_by_defect(test, maps).set_index("defect")
    assert list(table.index) == ["good", "large", "small"]
    assert table.loc["small", "pixel_auroc"] == 1.0 and table.loc["small", "image_auroc"] == 1.0
    assert table.loc["large", "pixel_auroc"] < 0.5  # its pixels score below the normal ones beside them
    assert table.loc["large", "defect_pixel_share"] == pytest.approx(48 / 64)
    assert table["defect_images"].tolist() == [2, 1, 1]
    assert table.loc["good", ["image_auroc", "pixel_auroc"]].isna().all()  # the normal images have no metrics
    assert table["flagged_share"].isna().all()  # no verdicts without a score threshold
    # At a score threshold of 0.75 the small defect (score 1) is called anomalous, the large one (0.5) and the two
    # normal images (0) are not; one normal image above 0.2 makes half of them false alarms.
    assert metrics_by_defect(test, maps, score_threshold=0.75)["flagged_share"].tolist() == [0.0, 0.0, 1.0]
    maps[0, :, 0, 0] = 0.3
    assert metrics_by_defect(test, maps, score_threshold=0.2)["flagged_share"].tolist() == [0.5, 1.0, 1.0]
    with pytest.raises(ValueError, match="no defect names"):
        metrics_by_defect(TestSet(test.images, labels, masks), maps)


def test_test_set_scores_and_measures_each_image_inside_its_region():
    from i3ad.evaluation import TestSet

    # Two 8 x 8 frames whose images fill only rows 2-5; the masks show the images stretched to 8 x 8.
    regions = torch.zeros(2, 1, 8, 8)
    regions[..., 2:6, :] = 1
    masks = torch.zeros(2, 1, 8, 8)
    masks[1, :, :4, :4] = 1  # the top-left quarter of image 1 (rows 2-3, columns 0-3 of its frame)
    maps = torch.zeros(2, 1, 8, 8)
    maps[1, :, 2:4, :4] = 1.0
    maps[0, :, 0, :] = 9.0  # the fill of the normal image: ignored
    test = TestSet(torch.zeros(2, 1, 8, 8), torch.tensor([0, 1]), masks, regions=regions)
    row = test.metrics(maps)
    assert row["image_auroc"] == 1.0 and row["pixel_auroc"] == 1.0
    whole_frame = TestSet(torch.zeros(2, 1, 8, 8), torch.tensor([0, 1]), masks).metrics(maps)
    assert whole_frame["image_auroc"] == 0.0 and whole_frame["pixel_auroc"] < 1.0
    subset = test.subset(torch.tensor([False, True]))
    assert torch.equal(subset.regions, regions[1:]) and torch.equal(subset.masks, masks[1:])


def test_non_finite_scores_are_refused_not_ranked():
    # torch sorts NaN as the largest value: AUROC came out 0.5, F1-max 0.8 and AUPRO 0.0 instead of an error.
    scores, labels = torch.tensor([0.1, 0.2, float("nan"), 0.4]), torch.tensor([0, 1, 0, 1])
    for metric in (binary_auroc, f1_max):
        with pytest.raises(ValueError, match="NaN or infinite"):
            metric(scores, labels)
    maps, masks = torch.rand(2, 1, 4, 4), torch.zeros(2, 1, 4, 4)
    masks[0, 0, :2, :2] = 1
    maps[1, 0, 3, 3] = float("inf")
    with pytest.raises(ValueError, match="NaN or infinite"):
        aupro(maps, masks)
