"""What a project's labelling config asks of the backend: which object tag holds the image or
video, which control the masks go to, and their label values."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from backends.request_errors import RequestError

# Controls whose regions the backend writes (answers).
MASK_CONTROLS = ("BrushLabels", "Brush")
POLYGON_CONTROLS = ("PolygonLabels", "Polygon")


@dataclass(frozen=True)
class Control:
    tag: str  # e.g. "BrushLabels"
    name: str  # from_name
    to_name: str
    labels: tuple[str, ...] = ()

    @property
    def result_type(self) -> str:
        """The `type` of this control's regions in Label Studio's JSON ("brushlabels")."""
        return self.tag.lower()

    def label_for(self, wanted: list[str]) -> list[str]:
        """The label the user picked, where this control has it; else its first label."""
        if not self.labels:
            return []
        picked = [label for label in wanted if label in self.labels]
        return picked[:1] or [self.labels[0]]


@dataclass(frozen=True)
class LabelConfig:
    kind: str  # "image" or "video"
    object_name: str  # the Image / Video tag's name (to_name)
    data_key: str  # the task data field that holds its URL ("image" for value="$image")
    controls: tuple[Control, ...] = field(default_factory=tuple)
    # <Image valueList="$frames">: the field holds a list of image URLs shown as pages (a
    # video clip's frames), and every region names its page by `item_index`
    paged: bool = False

    def first(self, tags: tuple[str, ...]) -> Control | None:
        return next((c for c in self.controls if c.tag in tags), None)

    @property
    def mask_control(self) -> Control | None:
        return self.first(MASK_CONTROLS)

    @property
    def polygon_control(self) -> Control | None:
        return self.first(POLYGON_CONTROLS)

    @property
    def video_control(self) -> Control | None:
        return self.first(("VideoRectangle",))


def parse_label_config(xml: object) -> LabelConfig:
    """The first Image or Video tag of a Label Studio config and the controls that point at it."""
    if not isinstance(xml, str) or not xml.strip():
        raise RequestError("the request has no label_config (the project's labelling config, a string)")
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise RequestError(f"label_config is not valid XML ({exc})") from None
    obj = next((el for el in root.iter() if el.tag in ("Image", "Video")), None)
    if obj is None:
        raise RequestError("label_config has no <Image> or <Video> tag for polypseg to segment")
    name = obj.get("name")
    paged = obj.tag == "Image" and obj.get("valueList") is not None
    value = obj.get("valueList", "") if paged else obj.get("value", "")
    if not name or not value.startswith("$"):
        raise RequestError(f'<{obj.tag}> needs a name and value="$field" (or valueList="$field")')
    controls = tuple(
        Control(
            tag=el.tag,
            name=el.get("name", ""),
            to_name=el.get("toName", ""),
            labels=tuple(label.get("value", "") for label in el.iter("Label")),
        )
        for el in root.iter()
        if el.get("toName") and name in el.get("toName", "").split(",")
    )
    config = LabelConfig(obj.tag.lower(), name, value[1:], controls, paged)
    if config.kind == "image" and config.mask_control is None and config.polygon_control is None:
        raise RequestError(
            f"label_config has no <BrushLabels> (or <PolygonLabels>) for image {name!r}: "
            "polypseg answers with masks"
        )
    if config.kind == "video" and config.video_control is None:
        raise RequestError(f"label_config has no <VideoRectangle> for video {name!r}: polypseg tracks boxes")
    return config
