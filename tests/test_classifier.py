"""The type classifier's pure parts: the split, the metrics, the augmentation, diversity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from stages.common.errors import StageError
from stages.evaluate import diversity
from stages.models.classifier import TypeClassifier, augment, stratified_split, to_tensor
from stages.train_classifier import held_out_metrics


def test_split_never_puts_an_image_in_both_sets_and_keeps_class_shares():
    labels = [1] * 40 + [0] * 160
    ids = list(range(200))
    train, test = stratified_split(ids, labels, 0.25, seed=7)
    assert not set(train) & set(test)
    assert sorted(train + test) == ids
    assert len(test) == 50
    assert sum(labels[i] for i in test) == 10  # 20 % positives, as in the whole set
    assert stratified_split(ids, labels, 0.25, seed=7) == (train, test)
    assert stratified_split(ids, labels, 0.25, seed=8)[1] != test


def test_split_needs_both_classes():
    with pytest.raises(StageError, match="at least 2 images"):
        stratified_split(list(range(10)), [1] + [0] * 9, 0.25, seed=0)


def test_metrics_on_hand_made_predictions():
    truth = np.array([1, 1, 0, 0, 0, 1])
    probability = np.array([0.9, 0.4, 0.2, 0.6, 0.1, 0.8])
    # predicted at 0.5: 1 0 0 1 0 1 -> TP 2, FN 1, FP 1, TN 2
    metrics = held_out_metrics(truth, probability, threshold=0.5)
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    assert metrics["precision"] == pytest.approx(2 / 3)
    assert metrics["recall"] == pytest.approx(2 / 3)
    assert metrics["f1"] == pytest.approx(2 / 3)
    assert metrics["roc_auc"] == pytest.approx(8 / 9)  # 8 of 9 positive-negative pairs ordered
    assert held_out_metrics(truth, probability, threshold=0.35)["recall"] == 1.0


def test_augmentation_keeps_shape_and_range_and_varies():
    batch = torch.rand(8, 3, 32, 32) * 2 - 1
    generator = torch.Generator().manual_seed(0)
    first, second = augment(batch, generator), augment(batch, generator)
    assert first.shape == batch.shape and first.min() >= -1 and first.max() <= 1
    assert not torch.equal(first, second)


def test_classifier_shapes():
    model = TypeClassifier(8)
    images = to_tensor([Image.new("RGB", (40, 40), "blue")] * 3, 32)
    assert images.shape == (3, 3, 32, 32) and images.min() >= -1
    assert model(images).shape == (3,)
    assert model.embed(images).shape == (3, 32)


def test_diversity_is_zero_for_copies_and_one_for_opposites():
    black, white = Image.new("RGB", (8, 8), "black"), Image.new("RGB", (8, 8), "white")
    assert diversity([black, black, black]) == 0.0
    assert diversity([black, white]) == pytest.approx(1.0)
    assert diversity([black]) == 0.0
