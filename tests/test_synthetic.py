"""The synthetic creature generator: deterministic, all types, each type recognisable."""

from __future__ import annotations

import numpy as np
import pytest

from stages.data.pokemon import TYPES
from stages.data.synthetic import creature_rng, draw_creature, synthetic_stats


def pixels(image) -> np.ndarray:
    """The opaque pixels of an RGBA creature, as float RGB rows."""
    array = np.asarray(image, dtype=float)
    return array[array[..., 3] > 200][:, :3]


def test_same_seed_same_pixels_other_seed_other_pixels():
    a = draw_creature("Water", creature_rng(42, 7), 64)
    b = draw_creature("Water", creature_rng(42, 7), 64)
    c = draw_creature("Water", creature_rng(43, 7), 64)
    assert a.tobytes() == b.tobytes()
    assert a.tobytes() != c.tobytes()


@pytest.mark.parametrize("type1", TYPES)
def test_every_type_draws_a_creature_on_transparency(type1):
    image = draw_creature(type1, creature_rng(1, 1), 96)
    assert image.mode == "RGBA" and image.size == (96, 96)
    alpha = np.asarray(image)[..., 3]
    assert alpha[0, 0] == 0  # the background is transparent
    assert 0.1 < (alpha > 0).mean() < 0.8  # a creature, not an empty or full canvas


def test_types_are_told_apart_by_their_colours():
    """Nearest-centroid on the mean colour: creatures of a type look like others of that type."""

    def mean_colour(type1: str, i: int) -> np.ndarray:
        return pixels(draw_creature(type1, creature_rng(5, i), 64)).mean(axis=0)

    centroids = {t: np.mean([mean_colour(t, i) for i in range(6)], axis=0) for t in TYPES}
    right = 0
    for type1 in TYPES:
        for i in range(6, 10):
            colour = mean_colour(type1, i)
            guess = min(TYPES, key=lambda t: np.linalg.norm(colour - centroids[t]))
            right += guess == type1
    assert right / (4 * len(TYPES)) >= 0.8


def test_individuals_of_a_type_differ():
    images = [np.asarray(draw_creature("Fire", creature_rng(3, i), 64)) for i in range(8)]
    assert len({im.tobytes() for im in images}) == 8
    coverage = [(im[..., 3] > 0).mean() for im in images]
    assert max(coverage) - min(coverage) > 0.05  # sizes vary


def test_shape_cues_differ_from_the_plain_body():
    """Water's fin and Flying's wings make wider silhouettes than Normal's plain round body."""

    def width(type1: str) -> float:
        spans = []
        for i in range(10):
            alpha = np.asarray(draw_creature(type1, creature_rng(9, i), 64))[..., 3] > 0
            columns = np.flatnonzero(alpha.any(axis=0))
            spans.append(columns[-1] - columns[0])
        return float(np.mean(spans))

    assert width("Flying") > width("Normal")


def test_stats_table_has_the_real_shape():
    stats = synthetic_stats(540, seed=42)
    assert list(stats.columns[:5]) == ["id", "name", "type1", "type2", "generation"]
    assert stats["id"].tolist() == list(range(1, 541))
    assert stats["name"].is_unique
    assert set(stats["type1"]) == set(TYPES)
    assert stats["type1"].value_counts().idxmax() == "Water"  # as in the real Pokédex
    assert stats["generation"].between(1, 9).all()
    assert (stats["type1"] != stats["type2"]).all()
    assert synthetic_stats(540, seed=42).equals(stats)
    assert not synthetic_stats(540, seed=1).equals(stats)


def test_small_tables_still_have_every_type():
    assert set(synthetic_stats(18, seed=0)["type1"]) == set(TYPES)
