"""SAM2 (the `sam2` package) as an image predictor: box, clicks, both, and a previous mask.

`prepare` runs the Hiera image encoder once per image (the cached part, seconds on a CPU);
`segment` runs only the prompt encoder and mask decoder. The model's config is read from the
checkpoint's metadata, or recognised from the weights of an official `sam2.1_hiera_*.pt` file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from polypseg.checkpoints import load_weights
from polypseg.errors import CheckpointError
from polypseg.masks import clean_mask
from polypseg.predictors.base import ImagePredictor, Prediction, PreparedImage
from polypseg.prompts import Prompt

# (trunk embedding width, number of Hiera blocks) -> config size suffix.
HIERA_SIZES = {(96, 12): "t", (96, 16): "s", (112, 24): "b+", (144, 48): "l"}
SIZE_NAMES = {"tiny": "t", "small": "s", "base_plus": "b+", "large": "l"}
# Logit given to a previous binary mask: confidently inside / outside, as SAM's own outputs are.
MASK_LOGIT = 10.0


def sam2_pixel_indices(coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Prompt coordinates (..., N, 2) in polypseg's convention (continuous: pixel x covers
    [x, x + 1), a box's x2 is its right edge) as SAM2 takes them: pixel indices, to which its
    prompt encoder adds the half pixel, and boxes from the first pixel to the last, both
    included (SAM2's training draws clicks at pixel indices and boxes with `mask_to_box`).
    Labels (..., N): 2 and 3 a box's corners (at most one box per prompt), 1 and 0 clicks."""
    offset = torch.where(labels == 2, 0.0, torch.where(labels == 3, -1.0, -0.5))
    converted = coords + offset[..., None].to(coords)
    first, last = labels == 2, labels == 3
    if first.any():  # a box under a pixel wide at the model's size: its last pixel is its first
        converted[last] = torch.maximum(converted[last], converted[first])
    return converted


def sam2_config_name(size: str = "t", family: str = "sam2.1") -> str:
    """The packaged config for a size (t, s, b+, l, or tiny, small, base_plus, large)."""
    size = SIZE_NAMES.get(size, size)
    if size not in HIERA_SIZES.values():
        raise CheckpointError(f"unknown SAM2 size {size!r}: one of t, s, b+, l")
    return f"configs/{family}/{family}_hiera_{size}.yaml"


def config_from_weights(state: dict[str, torch.Tensor]) -> str:
    """Recognise the config of an official checkpoint from its weights' shapes."""
    try:
        width = int(state["image_encoder.trunk.patch_embed.proj.weight"].shape[0])
        blocks = 1 + max(int(k.split(".")[3]) for k in state if k.startswith("image_encoder.trunk.blocks."))
    except (KeyError, ValueError):
        raise CheckpointError("weights are not a SAM2 model (no Hiera image encoder)") from None
    if (width, blocks) not in HIERA_SIZES:
        raise CheckpointError(f"a Hiera encoder of width {width} with {blocks} blocks is no SAM2 size")
    family = "sam2.1" if "no_obj_embed_spatial" in state else "sam2"
    return sam2_config_name(HIERA_SIZES[(width, blocks)], family)


def create_sam2_model(config: str, device: str = "cpu", image_size: int | None = None) -> torch.nn.Module:
    """An untrained SAM2 model (SAM2Base) of a packaged config.

    `image_size` (a multiple of 64) overrides the config's 1024 px working resolution: the
    weights are the same, every feature map scales with it, and the encoder's cost falls
    with its square.
    """
    from sam2.build_sam import build_sam2

    overrides = []
    if image_size is not None:
        if image_size % 64:
            raise CheckpointError(f"SAM2 working resolution {image_size} is not a multiple of 64")
        overrides.append(f"++model.image_size={image_size}")
    return build_sam2(config, ckpt_path=None, device=device, mode="eval", hydra_overrides_extra=overrides)


def image_features(model: Any, images: torch.Tensor) -> dict[str, Any]:
    """SAM2's image embedding and high-resolution features for a batch of normalised images
    at the model's resolution (what the mask decoder reads), as the image predictor makes them."""
    backbone = model.forward_image(images)
    _, vision_feats, _, sizes = model._prepare_backbone_features(backbone)
    if model.directly_add_no_mem_embed:
        vision_feats[-1] = vision_feats[-1] + model.no_mem_embed
    batch = images.shape[0]
    feats = [
        feat.permute(1, 2, 0).reshape(batch, -1, *size)
        for feat, size in zip(vision_feats, sizes, strict=True)
    ]
    return {"image_embed": feats[-1], "high_res_feats": feats[:-1]}


def decode_masks(
    model: Any, features: dict[str, Any], sparse: torch.Tensor, dense: torch.Tensor, multimask: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Low-resolution mask logits and predicted IoUs for prompt embeddings on image features."""
    low_res, quality, _, _ = model.sam_mask_decoder(
        image_embeddings=features["image_embed"],
        image_pe=model.sam_prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=multimask,
        repeat_image=False,
        high_res_features=features["high_res_feats"],
    )
    return low_res, quality


class Sam2Predictor(ImagePredictor):
    def __init__(self, model: Any, metadata: dict[str, Any], device: str = "cpu", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        from sam2.utils.transforms import SAM2Transforms

        self.model = model.to(device).eval()  # a SAM2Base, whose attributes are untyped
        self.metadata = metadata
        self.name = "sam2"
        self.version = str(metadata.get("version", metadata["config"]))
        self.device = torch.device(device)
        size = int(model.image_size)
        self.transforms = SAM2Transforms(resolution=size, mask_threshold=0.0)

    @classmethod
    def from_state(
        cls,
        state: dict[str, torch.Tensor],
        metadata: dict[str, Any],
        path: str,
        device: str = "cpu",
        image_size: int | None = None,
        **kwargs: Any,
    ) -> Sam2Predictor:
        metadata = {**metadata, "architecture": "sam2"}
        metadata.setdefault("config", config_from_weights(state))
        metadata.setdefault("version", Path(path).stem)  # an official file: its name says which
        model = create_sam2_model(metadata["config"], image_size=image_size or metadata.get("image_size"))
        load_weights(model, state, path, metadata["config"])
        return cls(model, metadata, device=device, **kwargs)

    @torch.inference_mode()
    def _encode(self, image: np.ndarray) -> tuple[Any, int]:
        features = image_features(self.model, self.transforms(image)[None].to(self.device))
        feats = [features["image_embed"], *features["high_res_feats"]]
        return features, sum(f.numel() * f.element_size() for f in feats)

    def prompt_points(
        self, prompt: Prompt, height: int, width: int
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The box and clicks as SAM2's point input (pixel indices at the model's resolution,
        see `sam2_pixel_indices`; labels 2 and 3 for the box corners, 1 and 0 for clicks),
        None without either."""
        coords: list[tuple[float, float]] = []
        labels: list[int] = []
        if prompt.box is not None:
            coords += [(prompt.box.x1, prompt.box.y1), (prompt.box.x2, prompt.box.y2)]
            labels += [2, 3]
        for p in prompt.points:
            coords.append((p.x, p.y))
            labels.append(1 if p.positive else 0)
        if not coords:
            return None
        points = self.transforms.transform_coords(
            torch.tensor([coords], dtype=torch.float32, device=self.device),
            normalize=True,
            orig_hw=(height, width),
        )
        kinds = torch.tensor([labels], dtype=torch.int, device=self.device)
        return sam2_pixel_indices(points, kinds), kinds

    def _mask_input(self, previous: np.ndarray) -> torch.Tensor:
        """An image-sized previous mask (bool) or logits (float) at the decoder's input size."""
        logits = np.where(previous, MASK_LOGIT, -MASK_LOGIT) if previous.dtype == bool else previous
        tensor = torch.as_tensor(logits, dtype=torch.float32, device=self.device)[None, None]
        low = int(self.model.image_size) // 4
        return F.interpolate(tensor, size=(low, low), mode="bilinear", align_corners=False)

    @torch.inference_mode()
    def _segment(self, prepared: PreparedImage, prompt: Prompt) -> Prediction:
        height, width = prepared.height, prepared.width
        points = self.prompt_points(prompt, height, width)  # None: a mask alone is a prompt too
        mask_input = self._mask_input(prompt.previous_mask) if prompt.previous_mask is not None else None
        sparse, dense = self.model.sam_prompt_encoder(points=points, boxes=None, masks=mask_input)
        # One click alone is ambiguous (the polyp, its fold, the whole bowel wall): ask for
        # several masks and keep the one the model rates best.
        ambiguous = prompt.box is None and len(prompt.points) == 1
        low_res, quality = decode_masks(self.model, prepared.features, sparse, dense, multimask=ambiguous)
        best = int(quality[0].argmax())
        full = self.transforms.postprocess_masks(low_res[:, best : best + 1], (height, width))
        mask = clean_mask(full[0, 0].cpu().numpy() > 0, prompt)
        return Prediction(mask=mask, score=float(quality[0, best].clamp(0, 1)))
