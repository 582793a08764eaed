"""The 80 COCO 2017 thing categories (official ids and names), for synthetic COCO files that a recipe with the
real class list can read: the synthetic shapes take the first ten (ids 1-10), the other 70 stay empty."""

from __future__ import annotations

import json
from pathlib import Path

NAMES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow", "elephant",
    "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard",
    "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli",
    "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed", "dining table", "toilet",
    "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)
IDS = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31, 32, 33, 34, 35,
    36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64,
    65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90,
)
assert len(NAMES) == len(IDS) == 80


def relabel_as_coco80(annotation_dir: str | Path) -> None:
    """Give a synthetic COCO's categories (ids 1..n, n <= 10) the COCO names and list all 80 categories."""
    for path in sorted(Path(annotation_dir).glob("instances_*.json")):
        data = json.loads(path.read_text())
        used = sorted(c["id"] for c in data["categories"])
        if used != list(IDS[: len(used)]):
            raise ValueError(f"{path}: category ids {used} are not COCO's first {len(used)}")
        data["categories"] = [{"id": i, "name": n, "supercategory": "object"} for i, n in zip(IDS, NAMES)]
        path.write_text(json.dumps(data))
