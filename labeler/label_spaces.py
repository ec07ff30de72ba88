"""Thing/stuff splits of public label spaces, for panoptic models whose config does not say which
classes are countable objects ("things": instances) and which are regions ("stuff": sky, wall, road).

A model's label space is recognised by its class names in id order (`known_things`), so a checkpoint
fine-tuned on another dataset with 150 classes is not mistaken for ADE20K.

ADE20K-150 panoptic (100 things, 50 stuff): ids, names and `isthing` as in the Mask2Former authors'
dataset registration (facebookresearch/Mask2Former, mask2former/data/datasets/register_ade20k_panoptic.py,
ADE20K_150_CATEGORIES, commit 9b0651c6); the EoMT authors' thing list (tue-mps/eomt,
datasets/ade20k_panoptic.py, INSTANCE_MAPPING) is the same 100 ids. The short names are those of
the Hugging Face ADE20K label file (huggingface/label-files ade20k-id2label.json) that the
transformers ADE20K checkpoints carry in `id2label`.
"""

from __future__ import annotations

from dataclasses import dataclass

# (id, isthing, ADE20K names (synonyms, comma-separated), Hugging Face id2label name)
ADE20K_150_PANOPTIC = (
    (0, 0, "wall", "wall"),
    (1, 0, "building", "building"),
    (2, 0, "sky", "sky"),
    (3, 0, "floor", "floor"),
    (4, 0, "tree", "tree"),
    (5, 0, "ceiling", "ceiling"),
    (6, 0, "road, route", "road"),
    (7, 1, "bed", "bed"),
    (8, 1, "window", "windowpane"),
    (9, 0, "grass", "grass"),
    (10, 1, "cabinet", "cabinet"),
    (11, 0, "sidewalk, pavement", "sidewalk"),
    (12, 1, "person", "person"),
    (13, 0, "earth, ground", "earth"),
    (14, 1, "door", "door"),
    (15, 1, "table", "table"),
    (16, 0, "mountain, mount", "mountain"),
    (17, 0, "plant", "plant"),
    (18, 1, "curtain", "curtain"),
    (19, 1, "chair", "chair"),
    (20, 1, "car", "car"),
    (21, 0, "water", "water"),
    (22, 1, "painting, picture", "painting"),
    (23, 1, "sofa", "sofa"),
    (24, 1, "shelf", "shelf"),
    (25, 0, "house", "house"),
    (26, 0, "sea", "sea"),
    (27, 1, "mirror", "mirror"),
    (28, 0, "rug", "rug"),
    (29, 0, "field", "field"),
    (30, 1, "armchair", "armchair"),
    (31, 1, "seat", "seat"),
    (32, 1, "fence", "fence"),
    (33, 1, "desk", "desk"),
    (34, 0, "rock, stone", "rock"),
    (35, 1, "wardrobe, closet, press", "wardrobe"),
    (36, 1, "lamp", "lamp"),
    (37, 1, "tub", "bathtub"),
    (38, 1, "rail", "railing"),
    (39, 1, "cushion", "cushion"),
    (40, 0, "base, pedestal, stand", "base"),
    (41, 1, "box", "box"),
    (42, 1, "column, pillar", "column"),
    (43, 1, "signboard, sign", "signboard"),
    (44, 1, "chest of drawers, chest, bureau, dresser", "chest of drawers"),
    (45, 1, "counter", "counter"),
    (46, 0, "sand", "sand"),
    (47, 1, "sink", "sink"),
    (48, 0, "skyscraper", "skyscraper"),
    (49, 1, "fireplace", "fireplace"),
    (50, 1, "refrigerator, icebox", "refrigerator"),
    (51, 0, "grandstand, covered stand", "grandstand"),
    (52, 0, "path", "path"),
    (53, 1, "stairs", "stairs"),
    (54, 0, "runway", "runway"),
    (55, 1, "case, display case, showcase, vitrine", "case"),
    (56, 1, "pool table, billiard table, snooker table", "pool table"),
    (57, 1, "pillow", "pillow"),
    (58, 1, "screen door, screen", "screen door"),
    (59, 0, "stairway, staircase", "stairway"),
    (60, 0, "river", "river"),
    (61, 0, "bridge, span", "bridge"),
    (62, 1, "bookcase", "bookcase"),
    (63, 0, "blind, screen", "blind"),
    (64, 1, "coffee table", "coffee table"),
    (65, 1, "toilet, can, commode, crapper, pot, potty, stool, throne", "toilet"),
    (66, 1, "flower", "flower"),
    (67, 1, "book", "book"),
    (68, 0, "hill", "hill"),
    (69, 1, "bench", "bench"),
    (70, 1, "countertop", "countertop"),
    (71, 1, "stove", "stove"),
    (72, 1, "palm, palm tree", "palm"),
    (73, 1, "kitchen island", "kitchen island"),
    (74, 1, "computer", "computer"),
    (75, 1, "swivel chair", "swivel chair"),
    (76, 1, "boat", "boat"),
    (77, 0, "bar", "bar"),
    (78, 1, "arcade machine", "arcade machine"),
    (79, 0, "hovel, hut, hutch, shack, shanty", "hovel"),
    (80, 1, "bus", "bus"),
    (81, 1, "towel", "towel"),
    (82, 1, "light", "light"),
    (83, 1, "truck", "truck"),
    (84, 0, "tower", "tower"),
    (85, 1, "chandelier", "chandelier"),
    (86, 1, "awning, sunshade, sunblind", "awning"),
    (87, 1, "street lamp", "streetlight"),
    (88, 1, "booth", "booth"),
    (89, 1, "tv", "television receiver"),
    (90, 1, "plane", "airplane"),
    (91, 0, "dirt track", "dirt track"),
    (92, 1, "clothes", "apparel"),
    (93, 1, "pole", "pole"),
    (94, 0, "land, ground, soil", "land"),
    (95, 1, "bannister, banister, balustrade, balusters, handrail", "bannister"),
    (96, 0, "escalator, moving staircase, moving stairway", "escalator"),
    (97, 1, "ottoman, pouf, pouffe, puff, hassock", "ottoman"),
    (98, 1, "bottle", "bottle"),
    (99, 0, "buffet, counter, sideboard", "buffet"),
    (100, 0, "poster, posting, placard, notice, bill, card", "poster"),
    (101, 0, "stage", "stage"),
    (102, 1, "van", "van"),
    (103, 1, "ship", "ship"),
    (104, 1, "fountain", "fountain"),
    (105, 0, "conveyer belt, conveyor belt, conveyer, conveyor, transporter", "conveyer belt"),
    (106, 0, "canopy", "canopy"),
    (107, 1, "washer, automatic washer, washing machine", "washer"),
    (108, 1, "plaything, toy", "plaything"),
    (109, 0, "pool", "swimming pool"),
    (110, 1, "stool", "stool"),
    (111, 1, "barrel, cask", "barrel"),
    (112, 1, "basket, handbasket", "basket"),
    (113, 0, "falls", "waterfall"),
    (114, 0, "tent", "tent"),
    (115, 1, "bag", "bag"),
    (116, 1, "minibike, motorbike", "minibike"),
    (117, 0, "cradle", "cradle"),
    (118, 1, "oven", "oven"),
    (119, 1, "ball", "ball"),
    (120, 1, "food, solid food", "food"),
    (121, 1, "step, stair", "step"),
    (122, 0, "tank, storage tank", "tank"),
    (123, 1, "trade name", "trade name"),
    (124, 1, "microwave", "microwave"),
    (125, 1, "pot", "pot"),
    (126, 1, "animal", "animal"),
    (127, 1, "bicycle", "bicycle"),
    (128, 0, "lake", "lake"),
    (129, 1, "dishwasher", "dishwasher"),
    (130, 1, "screen", "screen"),
    (131, 0, "blanket, cover", "blanket"),
    (132, 1, "sculpture", "sculpture"),
    (133, 1, "hood, exhaust hood", "hood"),
    (134, 1, "sconce", "sconce"),
    (135, 1, "vase", "vase"),
    (136, 1, "traffic light", "traffic light"),
    (137, 1, "tray", "tray"),
    (138, 1, "trash can", "ashcan"),
    (139, 1, "fan", "fan"),
    (140, 0, "pier", "pier"),
    (141, 0, "crt screen", "crt screen"),
    (142, 1, "plate", "plate"),
    (143, 1, "monitor", "monitor"),
    (144, 1, "bulletin board", "bulletin board"),
    (145, 0, "shower", "shower"),
    (146, 1, "radiator", "radiator"),
    (147, 1, "glass, drinking glass", "glass"),
    (148, 1, "clock", "clock"),
    (149, 1, "flag", "flag"),
)


# COCO panoptic, in contiguous id order: the 80 thing classes (ids 0-79), then the 53 stuff classes.
COCO_THINGS = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
)  # fmt: skip
COCO_STUFF = (
    "banner", "blanket", "bridge", "cardboard", "counter", "curtain", "door-stuff", "floor-wood", "flower",
    "fruit", "gravel", "house", "light", "mirror-stuff", "net", "pillow", "platform", "playingfield", "railroad",
    "river", "road", "roof", "sand", "sea", "shelf", "snow", "stairs", "tent", "towel", "wall-brick",
    "wall-stone", "wall-tile", "wall-wood", "water-other", "window-blind", "window-other", "tree-merged",
    "fence-merged", "ceiling-merged", "sky-other-merged", "cabinet-merged", "table-merged", "floor-other-merged",
    "pavement-merged", "mountain-merged", "grass-merged", "dirt-merged", "paper-merged", "food-other-merged",
    "building-other-merged", "rock-merged", "wall-other-merged", "rug-merged",
)  # fmt: skip
COCO_133_PANOPTIC = tuple((i, int(i < len(COCO_THINGS)), name, name) for i, name in enumerate(COCO_THINGS + COCO_STUFF))


@dataclass(frozen=True)
class LabelSpace:
    name: str
    source: str
    rows: tuple  # (id, isthing, names, hf_name)

    @property
    def things(self) -> set[int]:
        return {i for i, isthing, _, _ in self.rows if isthing}

    def names(self, i: int) -> set[str]:
        _, _, names, hf_name = self.rows[i]
        return {_norm(n) for n in names.split(",")} | {_norm(names), _norm(hf_name)}


KNOWN = (
    LabelSpace(
        "ade20k-150-panoptic",
        "Mask2Former register_ade20k_panoptic.py (ADE20K_150_CATEGORIES isthing); labeler/label_spaces.py",
        ADE20K_150_PANOPTIC,
    ),
    LabelSpace(
        "coco-133-panoptic",
        "COCO panoptic API panoptic_coco_categories.json (isthing); labeler/label_spaces.py",
        COCO_133_PANOPTIC,
    ),
)


def _norm(name: str) -> str:
    """Case, underscores and hyphens do not tell names apart ("door-stuff", "door_stuff", "Door stuff")."""
    return " ".join(name.lower().replace("_", " ").replace("-", " ").split())


def known_things(id2label: dict[int, str], min_agreement: float = 0.9) -> tuple[set[int], str] | None:
    """(thing ids, label space name) when id2label is a known label space: same number of classes and
    at least `min_agreement` of the names match, id by id (any synonym counts). Else None."""
    for space in KNOWN:
        n = len(space.rows)
        if len(id2label) != n or set(id2label) != set(range(n)):
            continue
        agree = sum(_norm(id2label[i]) in space.names(i) for i in range(n))
        if agree >= min_agreement * n:
            return space.things, space.name
    return None
