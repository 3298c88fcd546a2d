import numpy as np
import pytest
from PIL import Image

from conftest import ONE_POLYP
from polypseg import images
from polypseg.errors import InputImageError
from polypseg.images import read_image, read_mask


def test_reads_rgb_jpeg(kvasir):
    image = read_image(kvasir / "images" / f"{ONE_POLYP}.jpg")
    assert image.dtype == np.uint8 and image.shape == (529, 622, 3)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16"])
def test_other_modes_become_rgb(tmp_path, polyp_image, mode):
    rgb = polyp_image[0][:64, :80]
    if mode == "I;16":
        picture = Image.fromarray(rgb[:, :, 0].astype(np.uint16) * 257)
    else:
        picture = Image.fromarray(rgb).convert(mode)
    path = tmp_path / "frame.png"
    picture.save(path)
    image = read_image(path)
    assert image.shape == (64, 80, 3) and image.dtype == np.uint8
    if mode == "L":  # gray repeated into three channels
        gray = np.asarray(Image.fromarray(rgb).convert("L"))
        assert all((image[:, :, c] == gray).all() for c in range(3))
    if mode == "I;16":  # scaled back to 8 bits
        np.testing.assert_allclose(image[:, :, 1].astype(int), rgb[:, :, 0], atol=1)
    if mode == "RGBA":
        np.testing.assert_array_equal(image, rgb)


def test_truncated_jpeg_is_named(tmp_path, kvasir):
    data = (kvasir / "images" / f"{ONE_POLYP}.jpg").read_bytes()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputImageError, match="cut.jpg: image data is truncated"):
        read_image(path)


def test_not_an_image_and_missing_file(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("hello")
    with pytest.raises(InputImageError, match="notes.jpg: not a readable image"):
        read_image(path)
    with pytest.raises(InputImageError, match="nothere.png: no such file"):
        read_image(tmp_path / "nothere.png")


def test_huge_image_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("RGB", (300, 200)).save(path)
    monkeypatch.setattr(images, "max_image_pixels", lambda: 300 * 200 - 1)
    with pytest.raises(InputImageError, match="300x200 is larger than the limit"):
        read_image(path)


def test_an_image_beyond_pillows_own_ceiling_is_refused_by_name(tmp_path, monkeypatch):
    path = tmp_path / "bomb.png"
    Image.new("RGB", (300, 200)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow refuses above twice this
    with pytest.raises(InputImageError, match="bomb.png: larger than Pillow will open"):
        read_image(path)


@pytest.mark.parametrize(
    "form", ["0/1", "palette", "inverted palette", "grey palette", "0/255", "16-bit", "green", "blue RGBA"]
)
def test_masks_in_every_usual_form_read_the_same(tmp_path, polyp_image, form):
    truth = polyp_image[1]
    if form == "0/1":
        picture = Image.fromarray(truth.astype(np.uint8))
    elif form == "palette":  # index 1 a dark red, darker than 127 as gray
        picture = Image.fromarray(truth.astype(np.uint8), mode="P")
        picture.putpalette([0, 0, 0, 128, 0, 0])
    elif form == "inverted palette":  # a 0/255 mask re-saved by a PNG compressor: white first
        picture = Image.fromarray((~truth).astype(np.uint8), mode="P")
        picture.putpalette([255, 255, 255, 0, 0, 0])
    elif form == "grey palette":  # a grey picture kept as a palette: its soft edge is not polyp
        grey = (truth.astype(np.uint8) * 255).copy()
        rim = np.zeros_like(truth)
        rim[:, 1:] = truth[:, 1:] != truth[:, :-1]
        grey[rim & ~truth] = 40  # a dark rim outside the polyp where the mask changes
        picture = Image.fromarray(grey, mode="L").convert("P")
    elif form == "0/255":
        picture = Image.fromarray(truth.astype(np.uint8) * 255)
    elif form in ("green", "blue RGBA"):  # drawn in a colour, on black (opaque)
        colour = np.zeros((*truth.shape, 3 if form == "green" else 4), np.uint8)
        colour[..., 1 if form == "green" else 2] = truth * 255
        if form == "blue RGBA":
            colour[..., 3] = 255
        picture = Image.fromarray(colour)
    else:
        picture = Image.fromarray(truth.astype(np.uint16) * 65535)
    picture.save(tmp_path / "mask.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "mask.png"), truth)


def test_jpeg_mask_thresholded(kvasir):
    mask = read_mask(kvasir / "masks" / f"{ONE_POLYP}.jpg")
    assert mask.dtype == bool and mask.shape == (529, 622)
    assert 0.2 < mask.mean() < 0.8
