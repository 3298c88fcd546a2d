import numpy as np
import pytest
from cvat_sdk.masks import decode_mask, encode_mask
from label_studio_sdk.converter.brush import decode_rle

from backends.labelstudio.brush import decode_brush_rle, encode_brush_rle
from polypseg.formats.cvat_mask import decode_cvat_mask, encode_cvat_mask
from polypseg.formats.polygons import Polygon, largest_outline, mask_to_polygons, polygons_to_mask
from polypseg.metrics import score_masks


def ring_and_blob(height=120, width=160) -> np.ndarray:
    """Two components, one of them with a hole."""
    yy, xx = np.mgrid[0:height, 0:width]
    ring = ((xx - 50) ** 2 + (yy - 60) ** 2 <= 35**2) & ((xx - 50) ** 2 + (yy - 60) ** 2 > 12**2)
    blob = (xx - 130) ** 2 / 15**2 + (yy - 30) ** 2 / 10**2 <= 1
    return ring | blob


def test_brush_rle_round_trip_on_a_real_mask(polyp_image):
    mask = polyp_image[1]
    rle = encode_brush_rle(mask)
    np.testing.assert_array_equal(decode_brush_rle(rle, mask.shape[1], mask.shape[0]), mask)
    # What Label Studio decodes: RGBA bytes with the mask as 255 in every channel.
    rgba = decode_rle(rle).reshape(*mask.shape, 4)
    np.testing.assert_array_equal(rgba[:, :, 3], mask.astype(np.uint8) * 255)


def test_brush_rle_size_is_checked():
    rle = encode_brush_rle(np.ones((4, 5), bool))
    with pytest.raises(ValueError, match="not 6x4"):
        decode_brush_rle(rle, 6, 4)


def test_polygons_keep_holes_and_components():
    mask = ring_and_blob()
    polygons = mask_to_polygons(mask, tolerance=1.0)
    assert len(polygons) == 2
    assert len(polygons[0].holes) == 1 and len(polygons[1].holes) == 0  # the ring is larger
    redrawn = polygons_to_mask(polygons, 160, 120)
    assert score_masks(redrawn, mask).iou > 0.95


def test_polygon_simplification_reduces_vertices(polyp_image):
    mask = polyp_image[1]
    exact, simple = mask_to_polygons(mask, tolerance=0), mask_to_polygons(mask, tolerance=2.0)
    assert len(simple[0].outer) < len(exact[0].outer) / 3
    assert score_masks(polygons_to_mask(simple, mask.shape[1], mask.shape[0]), mask).iou > 0.98


def test_empty_mask_has_no_polygons():
    assert mask_to_polygons(np.zeros((10, 10), bool)) == []
    assert largest_outline(np.zeros((10, 10), bool)) is None


def test_largest_outline_is_the_larger_component_as_flat_points():
    mask = ring_and_blob()
    points = largest_outline(mask)
    assert points is not None and len(points) % 2 == 0
    assert all(round(v, 2) == v for v in points)
    outline = polygons_to_mask([Polygon(np.asarray(points).reshape(-1, 2))], 160, 120)
    yy, xx = np.mgrid[0:120, 0:160]
    disk = (xx - 50) ** 2 + (yy - 60) ** 2 <= 35**2  # the ring's outer edge; the blob is left out
    assert score_masks(outline, disk).iou > 0.95


@pytest.mark.parametrize("which", ["real", "rings", "corner", "empty"])
def test_cvat_mask_matches_cvat_sdk(polyp_image, which):
    if which == "real":
        mask = polyp_image[1]
    elif which == "rings":
        mask = ring_and_blob()
    elif which == "corner":
        mask = np.zeros((30, 40), bool)
        mask[0:5, 0:3] = True
    else:
        mask = np.zeros((30, 40), bool)
    encoded = encode_cvat_mask(mask)
    if mask.any():
        assert encoded == encode_mask(mask)
    height, width = mask.shape
    np.testing.assert_array_equal(decode_cvat_mask(encoded, width, height), mask)
    np.testing.assert_array_equal(decode_mask(encoded, image_width=width, image_height=height), mask)


def test_cvat_mask_errors():
    with pytest.raises(ValueError, match="leaves the 10x10 frame"):
        decode_cvat_mask([1, 0, 0, 10, 0], 10, 10)
    with pytest.raises(ValueError, match="cover 3 pixels, its box 4"):
        decode_cvat_mask([1, 2, 0, 0, 1, 1], 10, 10)
    # Runs far beyond the box are refused before anything is allocated for them.
    with pytest.raises(ValueError, match=f"cover {10**10 + 3} pixels, its box 4"):
        decode_cvat_mask([3, 10**10, 0, 0, 1, 1], 10, 10)
    with pytest.raises(ValueError, match="cover .* pixels, its box 4"):
        decode_cvat_mask([1e300, 0, 0, 1, 1], 10, 10)
    with pytest.raises(ValueError, match="must be finite"):
        decode_cvat_mask([float("inf"), 0, 0, 1, 1], 10, 10)


def test_outlines_on_the_pixels_edges_fill_back_as_cvat_fills_them(polyp_image):
    """CVAT's canvas puts pixel (x, y) at the square (x, y)-(x+1, y+1) and its export fills a
    polygon's pixels by their centres (pycocotools, `polypseg.formats.rasterise`). An outline
    through the boundary pixels' centres loses half a pixel all round there (a 20 x 20 square
    became 19 x 19: 361 pixels); one along their edges gives the mask back."""
    from polypseg.formats.rasterise import fill_polygon

    square = np.zeros((48, 64), bool)
    square[10:30, 12:32] = True
    through_centres = np.array([(12, 10), (31, 10), (31, 29), (12, 29)])  # the boundary pixels'
    assert fill_polygon(through_centres, 64, 48).sum() == 19 * 19
    on_edges = largest_outline(square)
    assert np.array_equal(fill_polygon(np.array(on_edges), 64, 48), square)
    _, mask = polyp_image  # a real polyp: 0.99 of it at 1 px of simplification
    truth = mask > 0
    outline = np.array(largest_outline(truth))
    assert score_masks(fill_polygon(outline, truth.shape[1], truth.shape[0]), truth).iou > 0.99
    (polygon,) = mask_to_polygons(ring_and_blob())[:1]
    assert len(polygon.holes) == 1  # holes too
