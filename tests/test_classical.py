"""The weight-free `classical` preset: deterministic, edge-following, honest about what it is."""

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import distance_transform_edt

from labeler.classical import CLASS_NAMES, ClassicalLabeler, ClassicalParams, colour_class, label_image
from labeler.registry import build_labeler
from shards.synthetic import make_scene


def edges(ids: np.ndarray) -> np.ndarray:
    """Pixels whose right or lower neighbour has another id."""
    e = np.zeros(ids.shape, bool)
    e[:, :-1] |= ids[:, :-1] != ids[:, 1:]
    e[:-1] |= ids[:-1] != ids[1:]
    return e


def boundary_scores(pred: np.ndarray, sem: np.ndarray, inst: np.ndarray, tol: float = 2.0) -> tuple[float, float]:
    """(precision, recall) of predicted instance boundaries against a scene's exact edges: the share of
    predicted boundary pixels within `tol` px of a true edge (any region change), and the share of
    true object outlines within `tol` px of a predicted boundary."""
    truth = edges(sem.astype(np.int64) * 65536 + inst)
    p = edges(pred)
    precision = float((distance_transform_edt(~truth)[p] <= tol).mean())
    recall = float((distance_transform_edt(~p)[edges(inst)] <= tol).mean())
    return precision, recall


@pytest.fixture(scope="module")
def scenes():
    rng = np.random.default_rng(3)
    return [make_scene(rng, 160, 224) for _ in range(4)]


def test_instance_boundaries_follow_image_edges(scenes):
    params = ClassicalParams()
    precisions, recalls = [], []
    for rgb, sem, inst, _ in scenes:
        labels = label_image(rgb, params)
        assert labels.instances, "object-sized regions were found"
        p, r = boundary_scores(labels.instance, sem, inst)
        precisions.append(p)
        recalls.append(r)
    # Measured: precision 0.99-1.00, recall 0.89-1.00 on these scenes (noise std 12, striped objects).
    assert np.mean(precisions) > 0.95 and min(precisions) > 0.9, precisions
    assert np.mean(recalls) > 0.85, recalls
    # The check can fail: a grid that ignores the image scores far lower.
    rgb, sem, inst, _ = scenes[0]
    grid = (np.arange(160)[:, None] // 40 * 8 + np.arange(224)[None, :] // 28 + 1).astype(np.uint16)
    assert boundary_scores(grid, sem, inst)[0] < 0.5


def test_deterministic_on_photos_and_scenes(sample_tree, scenes):
    photo = np.asarray(Image.open(next(sample_tree.glob("n04266014/*.JPEG"))).convert("RGB"))
    images = [photo, scenes[1][0]]
    first = ClassicalLabeler().label(images)
    second = ClassicalLabeler().label([im.copy() for im in images])
    for a, b in zip(first, second, strict=True):
        assert np.array_equal(a.semantic, b.semantic) and np.array_equal(a.instance, b.instance)
        assert [i.to_json() for i in a.instances] == [i.to_json() for i in b.instances]


def test_maps_and_records_are_consistent(sample_tree):
    photo = np.asarray(Image.open(next(sample_tree.glob("n09193705/*.JPEG"))).convert("RGB"))
    lab = label_image(photo, ClassicalParams())
    assert lab.semantic.shape == lab.instance.shape == photo.shape[:2]  # back at full size (512 > max_side)
    assert lab.semantic.dtype == np.uint8 and lab.semantic.max() < len(CLASS_NAMES)
    ids = [i.id for i in lab.instances]
    assert ids == list(range(1, len(ids) + 1)) and set(np.unique(lab.instance)) - {0} == set(ids)
    areas = [i.area for i in lab.instances]
    assert areas == sorted(areas, reverse=True)  # numbered largest first
    pixels = photo.shape[0] * photo.shape[1]
    assert all(0.005 * pixels <= a <= 0.5 * pixels for a in areas)  # object-sized (rescaling moves edges a little)
    assert all(0.0 <= i.score <= 1.0 and i.category is None for i in lab.instances)
    # Each instance is one region, so it has one semantic class.
    for i in lab.instances:
        assert len(np.unique(lab.semantic[lab.instance == i.id])) == 1


def test_colour_names_of_known_colours():
    from skimage.color import rgb2lab

    rgb = {
        "black": (10, 10, 10),
        "grey": (128, 128, 128),
        "white": (245, 245, 245),
        "red": (220, 30, 30),
        "orange": (150, 100, 50),  # brown
        "yellow": (240, 220, 30),
        "green": (40, 160, 40),
        "cyan": (40, 200, 200),
        "blue": (40, 60, 220),
        "purple": (200, 40, 200),
    }
    lab = rgb2lab(np.array([list(rgb.values())], np.uint8))[0]
    names = [CLASS_NAMES[2 * c].split()[1] for c in colour_class(lab, ClassicalParams())]
    assert names == list(rgb)


def test_degenerate_images():
    lab = ClassicalLabeler().label([np.zeros((1, 1, 3), np.uint8), np.full((64, 48, 3), 200, np.uint8)])
    for labels, shape in zip(lab, [(1, 1), (64, 48)], strict=True):
        assert labels.semantic.shape == shape and not labels.instances  # one flat region is background


def test_preset_describes_itself_as_weight_free():
    labeler = build_labeler("classical")
    d = labeler.describe()
    assert d.preset == "classical" and d.weight_free is True and d.models == []
    assert "random_labels" not in d.to_json() and d.settings["scale"] == ClassicalParams().scale
    space = labeler.label_space()
    assert space.instance == "class-agnostic" and len(space.semantic) == 20
