"""Stage train_classifier: is this Pokémon of base.pokemon_type? A small CNN, trained on the
processed images of every type, scored on a held-out split only.

The split is stratified by class (classifier.test_size, base.seed); class imbalance is weighed
into the loss. Per-epoch history (loss and accuracy, train and test) goes to dvclive; accuracy,
precision, recall, F1 and ROC AUC on the held-out images to metrics.json; the confusion matrix
to a JSON that DVC's confusion template draws.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import torch
from PIL import Image
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score
from torch import nn
from tqdm import tqdm

from stages.common import paths
from stages.common.cli import run_stage
from stages.common.determinism import deterministic_torch
from stages.common.errors import StageError
from stages.common.fsutil import atomic_dir
from stages.common.params import load_params
from stages.common.tracking import close_live, open_live
from stages.data.pokemon import in_training_type
from stages.models.classifier import (
    TypeClassifier,
    augment,
    save_classifier,
    scores,
    stratified_split,
    to_tensor,
)

log = logging.getLogger(__name__)

WIDTH = 16  # channels of the first conv block


def labels_for(pokemon_type: str) -> tuple[str, str]:
    """Names of the positive and negative class, as the confusion matrix shows them."""
    return pokemon_type, f"not {pokemon_type}"


def read_images() -> tuple[list[dict], torch.Tensor]:
    metadata = paths.IMAGES / paths.METADATA
    if not metadata.is_file():
        raise StageError(f"{metadata} not found; run `dvc repro resize_pokemon_images` first")
    rows = [json.loads(line) for line in metadata.read_text(encoding="utf-8").splitlines() if line]
    images = [Image.open(paths.IMAGES / row["file_name"]) for row in rows]
    return rows, to_tensor(images, images[0].width)


def held_out_metrics(truth: np.ndarray, probability: np.ndarray, threshold: float) -> dict:
    """Accuracy, precision, recall, F1 and ROC AUC of predictions on held-out images."""
    predicted = (probability >= threshold).astype(int)
    has_both = len(set(truth.tolist())) == 2
    return {
        "accuracy": float(accuracy_score(truth, predicted)),
        "precision": float(precision_score(truth, predicted, zero_division=0)),
        "recall": float(recall_score(truth, predicted, zero_division=0)),
        "f1": float(f1_score(truth, predicted, zero_division=0)),
        "roc_auc": float(roc_auc_score(truth, probability)) if has_both else float("nan"),
    }


def main() -> None:
    deterministic_torch()
    params = load_params("base", "classifier")
    cfg, seed, pokemon_type = params.classifier, params.base.seed, params.base.pokemon_type
    if pokemon_type == "all":
        raise StageError(
            "base.pokemon_type is 'all': the classifier tells one type from the others; "
            "set base.pokemon_type to a type name"
        )
    rows, images = read_images()
    labels = [int(in_training_type(row["type1"], pokemon_type)) for row in rows]
    train_ids, test_ids = stratified_split(list(range(len(rows))), labels, cfg.test_size, seed)
    target = torch.tensor(labels, dtype=torch.float32)
    positives = float(target[train_ids].sum())
    pos_weight = torch.tensor((len(train_ids) - positives) / positives)

    torch.manual_seed(seed)
    model = TypeClassifier(WIDTH)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=1e-4)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    generator = torch.Generator().manual_seed(seed)
    live = open_live(paths.TRAIN_CLASSIFIER)
    train_index, test_index = torch.tensor(train_ids), torch.tensor(test_ids)
    for _ in tqdm(range(cfg.epochs), desc="train classifier", unit="epoch"):
        model.train()
        order = train_index[torch.randperm(len(train_index), generator=generator)]
        losses, correct = [], 0
        for start in range(0, len(order), cfg.batch_size):
            batch = order[start : start + cfg.batch_size]
            inputs = augment(images[batch], generator) if cfg.augment else images[batch]
            logits = model(inputs)
            loss = loss_fn(logits, target[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()) * len(batch))
            correct += int(((logits.detach() > 0).float() == target[batch]).sum())
        model.eval()
        with torch.inference_mode():
            test_logits = model(images[test_index])
            test_loss = float(loss_fn(test_logits, target[test_index]))
            test_correct = int(((test_logits > 0).float() == target[test_index]).sum())
        live.log_metric("train/loss", sum(losses) / len(order))
        live.log_metric("train/accuracy", correct / len(order))
        live.log_metric("test/loss", test_loss)
        live.log_metric("test/accuracy", test_correct / len(test_ids))
        live.next_step()

    probability = scores(model, images[test_index]).numpy()
    truth = target[test_index].numpy().astype(int)
    metrics = held_out_metrics(truth, probability, cfg.threshold)
    positive, negative = labels_for(pokemon_type)
    predicted = probability >= cfg.threshold
    live.log_sklearn_plot(
        "confusion_matrix",
        [positive if t else negative for t in truth],
        [positive if p else negative for p in predicted],
        name="confusion_matrix.json",
    )
    close_live(live, {**metrics, "train_images": len(train_ids), "test_images": len(test_ids)})
    with atomic_dir(paths.CLASSIFIER) as out:
        save_classifier(
            out,
            model,
            {
                "width": WIDTH,
                "image_size": int(images.shape[-1]),
                "pokemon_type": pokemon_type,
                "threshold": cfg.threshold,
                "seed": seed,
                "classifier": cfg.model_dump(),
                "test_files": [rows[i]["file_name"] for i in test_ids],
                "metrics": metrics,
            },
        )
    log.info("held-out metrics on %d images: %s", len(test_ids), json.dumps(metrics))


if __name__ == "__main__":
    run_stage(main)
