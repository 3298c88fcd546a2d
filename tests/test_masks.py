import numpy as np

from polypseg.masks import clean_mask, component_boxes, ellipse_in_box, mask_box
from polypseg.metrics import score_masks
from polypseg.prompts import Box, Point, Prompt


def test_clean_fills_holes_and_drops_far_specks():
    mask = np.zeros((100, 100), bool)
    mask[20:60, 20:60] = True
    mask[35:40, 35:40] = False  # a glare hole
    mask[90:93, 90:93] = True  # a speck far from the box
    cleaned = clean_mask(mask, Prompt(box=Box(15, 15, 65, 65)))
    assert cleaned[37, 37] and not cleaned[91, 91]
    assert cleaned.sum() == 40 * 40


def test_clean_keeps_components_under_positive_clicks():
    mask = np.zeros((100, 100), bool)
    mask[10:20, 10:20] = True
    mask[70:80, 70:80] = True
    cleaned = clean_mask(mask, Prompt(points=(Point(75, 75),)))
    assert cleaned[75, 75] and not cleaned[15, 15]


def test_boxes():
    mask = np.zeros((50, 60), bool)
    mask[5:10, 7:12] = True
    mask[30:45, 40:50] = True
    assert mask_box(mask) == Box(7, 5, 50, 45)
    assert mask_box(np.zeros((3, 3), bool)) is None
    assert component_boxes(mask) == [Box(7, 5, 12, 10), Box(40, 30, 50, 45)]
    mask[20:25, 0:3] = True  # a strip 3 pixels wide along the edge, 15 pixels: a speck
    mask[0, 20:40] = True  # a line along the top, 20 pixels but one high: a sliver
    assert component_boxes(mask) == [Box(7, 5, 12, 10), Box(40, 30, 50, 45)]


def test_ellipse_baseline_on_a_real_polyp(polyp_image, boxes):
    _, truth = polyp_image
    box = boxes["cju0qkwl35piu0993l0dewei2"][0]
    ellipse = ellipse_in_box(box, truth.shape[1], truth.shape[0])
    # The inscribed ellipse covers pi/4 of its box, to within the pixel grid.
    assert abs(ellipse.sum() - np.pi / 4 * box.width * box.height) < 0.01 * box.width * box.height
    assert 0.6 < score_masks(ellipse, truth).iou < 0.95
