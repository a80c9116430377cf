"""Zero-shot segmentation scoring, ground-truth class masks, mIoU and zero-shot accuracy against explicit references."""

import math

import numpy as np
import pytest
import torch

from maple.data.synth import Obj, Scene, render_scene
from maple.eval.segmentation import class_mask, confusion_matrix, iou_per_class, mean_iou, patch_class_scores, segment
from maple.eval.zero_shot import zero_shot_accuracy


def test_patch_class_scores_are_cosines_of_each_patch_to_each_class():
    g = torch.Generator().manual_seed(0)
    patches, classes = torch.randn(2, 3, 3, 5, generator=g), torch.randn(4, 5, generator=g)
    got = patch_class_scores(patches, classes)
    assert got.shape == (2, 3, 3, 4)
    for b, i, j, c in [(0, 0, 0, 0), (1, 2, 1, 3), (0, 1, 2, 2)]:
        p, q = patches[b, i, j].tolist(), classes[c].tolist()
        cos = sum(x * y for x, y in zip(p, q)) / math.sqrt(sum(x * x for x in p) * sum(y * y for y in q))
        assert got[b, i, j, c].item() == pytest.approx(cos, abs=1e-6)


def test_segment_upsamples_each_patch_to_its_region_of_the_image():
    classes = torch.eye(3)
    # A 2x2 patch grid: top row class 1, bottom-left class 2, bottom-right class 0.
    patches = torch.stack([torch.stack([classes[1], classes[1]]), torch.stack([classes[2], classes[0]])])[None]
    mask = segment(patches, classes, size=8)[0]
    assert mask.shape == (8, 8)
    assert (mask[:4] == 1).all() and (mask[4:, :4] == 2).all() and (mask[4:, 4:] == 0).all()


def test_class_mask_gives_each_object_pixel_its_shape_class_and_background_zero():
    scene = Scene((Obj("circle", "red", "large", 0, 0), Obj("triangle", "blue", "large", 2, 2)), render_seed=3)
    _, objects = render_scene(scene, 48)
    classes = ["background", "circle", "square", "triangle"]
    mask = class_mask(scene, objects, classes)
    assert set(np.unique(mask)) == {0, 1, 3}
    assert np.array_equal(mask == 1, objects == 1) and np.array_equal(mask == 3, objects == 2)
    colour = class_mask(scene, objects, ["background", "red", "blue"], attribute="colour")
    assert np.array_equal(colour == 2, objects == 2)


def test_class_mask_names_an_object_whose_class_is_unknown():
    scene = Scene((Obj("star", "red", "large", 0, 0),))
    with pytest.raises(ValueError, match="'star'"):
        class_mask(scene, render_scene(scene, 24)[1], ["background", "circle"])


def test_confusion_matrix_counts_every_ground_truth_prediction_pair():
    rng = np.random.default_rng(0)
    pred, target = rng.integers(0, 3, (4, 5)), rng.integers(0, 3, (4, 5))
    want = np.zeros((3, 3), dtype=int)
    for t, p in zip(target.ravel(), pred.ravel()):
        want[t, p] += 1
    assert np.array_equal(confusion_matrix(pred, target, 3), want)


def test_iou_is_intersection_over_union_per_class_and_nan_when_class_absent():
    target = np.array([0, 0, 1, 1, 1, 0])
    pred = np.array([0, 1, 1, 1, 0, 0])
    ious = iou_per_class(confusion_matrix(pred, target, 3))
    # class 0: TP {0, 5} = 2, union {0, 1, 4, 5} = 4; class 1: TP {2, 3} = 2, union {1, 2, 3, 4} = 4; class 2 absent.
    assert ious[0] == pytest.approx(0.5) and ious[1] == pytest.approx(0.5) and np.isnan(ious[2])
    assert mean_iou(confusion_matrix(pred, target, 3)) == pytest.approx(0.5)


def test_zero_shot_accuracy_counts_an_image_when_its_best_class_is_present_in_it():
    classes = torch.eye(3)
    images = torch.tensor([[0.9, 0.1, 0.0], [0.0, 0.2, 0.8], [0.1, 0.7, 0.2]])
    assert zero_shot_accuracy(images, classes, [{0}, {0, 1}, {1, 2}]) == pytest.approx(2 / 3)
