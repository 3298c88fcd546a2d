import numpy as np
import pytest

from polypseg.errors import PromptError
from polypseg.prompts import Box, Point, Prompt


def test_box_partly_outside_is_clipped():
    box = Prompt(box=Box(-20, 10, 700, 90)).fitted_to(640, 480).box
    assert box == Box(0, 10, 640, 90)


@pytest.mark.parametrize("box", [Box(10, 10, 10, 50), Box(30, 10, 20, 50)])
def test_empty_box_is_refused(box):
    with pytest.raises(PromptError, match="no area"):
        Prompt(box=box).fitted_to(640, 480)


def test_box_fully_outside_is_refused():
    with pytest.raises(PromptError, match="outside the 640x480 image"):
        Prompt(box=Box(700, 10, 800, 90)).fitted_to(640, 480)


def test_point_outside_is_refused():
    with pytest.raises(PromptError, match=r"point \(640,5\) lies outside"):
        Prompt(points=(Point(640, 5),)).fitted_to(640, 480)


def test_prompt_needs_box_click_or_mask():
    with pytest.raises(PromptError, match="needs a box, a click or a mask"):
        Prompt().fitted_to(640, 480)
    assert Prompt(previous_mask=np.ones((480, 640), bool)).fitted_to(640, 480).box is None


def test_previous_mask_must_match_the_image():
    with pytest.raises(PromptError, match="previous mask is 10x10"):
        Prompt(box=Box(0, 0, 5, 5), previous_mask=np.zeros((10, 10), bool)).fitted_to(640, 480)


def test_parsing():
    assert Box.parse("1,2,30.5,40") == Box(1, 2, 30.5, 40)
    assert Point.parse("3,4") == Point(3, 4, True)
    assert Point.parse("3,4,0") == Point(3, 4, False)
    for bad in ("1,2,3", "a,b,c,d"):
        with pytest.raises(PromptError, match="X1,Y1,X2,Y2"):
            Box.parse(bad)
    with pytest.raises(PromptError, match="LABEL 0 or 1"):
        Point.parse("3,4,2")
