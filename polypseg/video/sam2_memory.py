"""The SAM2 tracker: SAM2's memory attention, driven one streamed frame at a time.

`sam2`'s own video predictor wants every frame in a folder up front (`init_state`). This
tracker calls the same model step (`SAM2Base.track_step`) itself as frames arrive, and keeps
only what the next steps can read: the prompted (conditioning) frames and the last few
frames' memories (`num_maskmem` spatial memories, `max_obj_ptrs_in_encoder` object
pointers), so memory stays flat however long the video is.

Lost: SAM2 scores whether the object is present on each frame; the tracker smooths that
probability over a few frames (an exponential moving average) and reports the polyp lost
while the smoothed value is below one half, painting no mask there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from polypseg.masks import mask_box
from polypseg.predictors.sam2 import Sam2Predictor
from polypseg.prompts import Prompt
from polypseg.video.tracking import TrackedFrame, VideoTracker

# The model asks for the video's length only to stop looking past its ends; a stream has none.
STREAM_LENGTH = 1 << 30
# What a frame's output must keep for later frames' memory attention.
MEMORY_KEYS = ("maskmem_features", "maskmem_pos_enc", "obj_ptr", "object_score_logits")


def empty_memory() -> dict[str, dict[int, dict[str, Any]]]:
    """SAM2's memory bank: the prompted (conditioning) frames' outputs and the others'."""
    return {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}


def memory_step(
    model: Any,
    memory: dict[str, dict[int, dict[str, Any]]],
    index: int,
    frame: torch.Tensor,
    point_inputs: dict[str, torch.Tensor] | None = None,
    mask_inputs: torch.Tensor | None = None,
    num_frames: int = STREAM_LENGTH,
    reverse: bool = False,
) -> dict[str, Any]:
    """One frame (a (1, 3, S, S) model input) through SAM2's memory, as its video predictor
    steps a frame (`SAM2Base.track_step`): the frame's features attend to the memory bank, the
    mask is decoded (from the prompt where one is given), and the frame's own memory joins
    the bank (as a conditioning frame where prompted). The tracker (inference) and the video
    fine-tune (training, gradients kept) both step frames with this. Returns the step's output."""
    backbone = model.forward_image(frame)
    _, feats, pos, sizes = model._prepare_backbone_features(backbone)
    prompted = point_inputs is not None or mask_inputs is not None
    out = model.track_step(
        frame_idx=index,
        is_init_cond_frame=prompted,
        current_vision_feats=feats,
        current_vision_pos_embeds=pos,
        feat_sizes=sizes,
        point_inputs=point_inputs,
        mask_inputs=mask_inputs,
        output_dict=memory,
        num_frames=num_frames,
        track_in_reverse=reverse,
        run_mem_encoder=True,
    )
    kind = "cond_frame_outputs" if prompted else "non_cond_frame_outputs"
    memory[kind][index] = {key: out[key] for key in MEMORY_KEYS if key in out}
    return out


class PresenceFilter:
    """Debounces SAM2's per-frame object presence into a lost flag."""

    def __init__(self, smoothing: float = 0.5, value: float = 1.0) -> None:
        self.smoothing = smoothing
        self.value = value

    def update(self, probability: float) -> bool:
        """Feed one frame's presence probability; True while the polyp counts as lost."""
        self.value = self.smoothing * self.value + (1 - self.smoothing) * probability
        return self.value < 0.5


@dataclass
class Sam2State:
    """SAM2's memory bank (prompted frames and the recent frames it can attend to), the
    smoothed presence, the last frame's index and the direction of travel."""

    memory: dict[str, dict[int, dict[str, Any]]] = field(default_factory=empty_memory)
    presence: float = 1.0
    previous: int | None = None
    backward: bool | None = None


class Sam2MemoryTracker(VideoTracker):
    kind = "sam2"

    def __init__(self, predictor: Sam2Predictor, smoothing: float = 0.5) -> None:
        self.predictor = predictor
        self.model: Any = predictor.model
        self.smoothing = smoothing

    @property
    def keep_recent(self) -> int:
        """How many past non-prompted frames the model can still attend to."""
        return max(self.model.num_maskmem, self.model.max_obj_ptrs_in_encoder) * max(
            1, self.model.memory_temporal_stride_for_eval
        )

    def start(self, index: int, image: np.ndarray, prompt: Prompt) -> tuple[TrackedFrame, Sam2State]:
        return self._run(Sam2State(), index, image, prompt)

    def step(
        self, state: Sam2State, index: int, image: np.ndarray, correction: Prompt | None = None
    ) -> tuple[TrackedFrame, Sam2State]:
        return self._run(state, index, image, correction)

    @torch.inference_mode()
    def _run(
        self, state: Sam2State, index: int, image: np.ndarray, anchor: Prompt | None
    ) -> tuple[TrackedFrame, Sam2State]:
        if anchor is None and not state.memory["cond_frame_outputs"]:
            raise ValueError("a SAM2 track starts from a prompt")
        backward = state.backward
        if backward is None and state.previous is not None:
            backward = index < state.previous
        height, width = image.shape[:2]
        point_inputs = mask_inputs = None
        if anchor is not None:
            anchor = anchor.fitted_to(width, height)
            points = self.predictor.prompt_points(anchor, height, width)
            if points is not None:
                point_inputs = {"point_coords": points[0], "point_labels": points[1]}
            else:  # started from a mask: SAM2 takes it as this frame's answer
                mask_inputs = self._mask_inputs(anchor.previous_mask)
        frame = self.predictor.transforms(image)[None].to(self.predictor.device)
        # A new bank (the tensors shared): the state given stays as it was, for the caller to
        # step again from.
        memory = {kind: dict(outputs) for kind, outputs in state.memory.items()}
        out = memory_step(self.model, memory, index, frame, point_inputs, mask_inputs, reverse=bool(backward))
        self._forget(memory["non_cond_frame_outputs"], index)
        presence = PresenceFilter(self.smoothing, 1.0 if anchor is not None else state.presence)
        probability = float(torch.sigmoid(out["object_score_logits"]).max())
        lost = presence.update(probability)
        logits = out["pred_masks_high_res"][0, 0].float().cpu().numpy()
        mask = cv2.resize(logits, (width, height), interpolation=cv2.INTER_LINEAR) > 0
        if lost or not mask.any():
            mask = np.zeros((height, width), dtype=bool)
        box = mask_box(mask)
        result = TrackedFrame(index, mask, box, probability, lost or box is None)
        return result, Sam2State(memory, presence.value, index, backward)

    def _state_tensors(self, state: Sam2State) -> dict[str, Any]:
        def stored(value: Any) -> Any:
            # fp16 halves the stored memory bank; the model reads it back as float32.
            if isinstance(value, torch.Tensor):
                return value.detach().to("cpu", torch.float16 if value.is_floating_point() else value.dtype)
            if isinstance(value, list):
                return [stored(v) for v in value]
            return value

        memory = {
            kind: {str(i): {k: stored(v) for k, v in out.items()} for i, out in outputs.items()}
            for kind, outputs in state.memory.items()
        }
        direction = -1 if state.backward is None else int(state.backward)
        return {
            "memory": memory,
            "presence": state.presence,
            "previous": state.previous,
            "backward": direction,
        }

    def _state_from_tensors(self, data: dict[str, Any]) -> Sam2State:
        device = self.predictor.device

        def loaded(value: Any) -> Any:
            if isinstance(value, torch.Tensor):
                return value.to(device, torch.float32 if value.is_floating_point() else value.dtype)
            if isinstance(value, list):
                return [loaded(v) for v in value]
            return value

        memory = {
            kind: {int(i): {k: loaded(v) for k, v in out.items()} for i, out in data["memory"][kind].items()}
            for kind in ("cond_frame_outputs", "non_cond_frame_outputs")
        }
        backward = None if data["backward"] < 0 else bool(data["backward"])
        return Sam2State(memory, float(data["presence"]), data["previous"], backward)

    def _mask_inputs(self, mask: np.ndarray | None) -> torch.Tensor:
        size = self.model.image_size
        tensor = torch.as_tensor(np.asarray(mask, dtype=np.float32), device=self.predictor.device)[None, None]
        return (F.interpolate(tensor, size=(size, size), mode="bilinear", antialias=True) >= 0.5).float()

    def _forget(self, outputs: dict[int, dict[str, Any]], index: int) -> None:
        """Drop non-prompted frames the model can no longer attend to."""
        for old in [i for i in outputs if abs(index - i) > self.keep_recent]:
            del outputs[old]
