import pytest
import torch

from conftest import random_box_channel_checkpoint
from polypseg.checkpoints import load_checkpoint, save_checkpoint
from polypseg.errors import CheckpointError, ModelError
from polypseg.predictors import build_predictor, default_checkpoint
from polypseg.predictors.registry import DEFAULT_MODEL


def test_round_trip_and_no_temporary_left(tmp_path):
    save_checkpoint(
        tmp_path / "m.pt", {"w": torch.ones(2)}, {"architecture": "unet", "version": "v1"}, step=3
    )
    state, metadata, extra = load_checkpoint(tmp_path / "m.pt")
    assert torch.equal(state["w"], torch.ones(2)) and metadata["version"] == "v1" and extra == {"step": 3}
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]


def test_interrupted_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "m.pt"
    save_checkpoint(path, {"w": torch.ones(2)}, {"version": "old"})

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", fail)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"w": torch.zeros(2)}, {"version": "new"})
    assert load_checkpoint(path)[1]["version"] == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]


def test_unreadable_files_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="missing.pt: no such checkpoint file"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt: not a readable PyTorch checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"weights": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="no 'model' state dict"):
        load_checkpoint(tmp_path / "other.pt")


def test_checkpoint_of_another_architecture(unet_checkpoint):
    with pytest.raises(CheckpointError, match="holds a unet model, not unetplusplus"):
        build_predictor("unetplusplus", unet_checkpoint)
    with pytest.raises(CheckpointError, match="holds a unet model, not sam2"):
        build_predictor("sam2", unet_checkpoint)


def test_weights_that_do_not_fit_their_metadata(tmp_path, unet_checkpoint):
    state, metadata, _ = load_checkpoint(unet_checkpoint)
    save_checkpoint(tmp_path / "lying.pt", state, {**metadata, "encoder": "resnet34"})
    with pytest.raises(CheckpointError, match="weights do not fit unet with encoder resnet34"):
        build_predictor(checkpoint=tmp_path / "lying.pt")


def test_unknown_model_and_missing_checkpoint(tmp_path):
    with pytest.raises(ModelError, match="unknown model 'segformer'"):
        build_predictor("segformer", tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="x.pt: no such checkpoint file"):
        build_predictor("unet", tmp_path / "x.pt")


def test_metadata_rebuilds_unetplusplus(tmp_path):
    path = random_box_channel_checkpoint(tmp_path / "pp.pt", "unetplusplus", "resnet18", size=96)
    predictor = build_predictor(checkpoint=path)
    assert predictor.name == "unetplusplus" and predictor.geometry.size == 96


def test_a_model_name_without_checkpoint_needs_one_unless_it_is_the_default(monkeypatch, unet_checkpoint):
    monkeypatch.setenv("POLYPSEG_CHECKPOINT", str(unet_checkpoint))
    assert build_predictor("unet").version == "test-unet"  # the default is a unet: take it
    with pytest.raises(ModelError, match="no checkpoint given for model 'sam2' .*pass one with --checkpoint"):
        build_predictor("sam2")
    monkeypatch.setenv("POLYPSEG_CHECKPOINT", "")  # set but empty, as compose passes an unset one
    assert default_checkpoint() == DEFAULT_MODEL


def test_a_file_that_is_not_a_checkpoint_is_one_line_naming_it_and_what_was_expected(tmp_path):
    from conftest import ROOT

    with pytest.raises(CheckpointError) as raised:
        load_checkpoint(ROOT / "README.md")
    message = str(raised.value)
    assert "\n" not in message and message.startswith(f"{ROOT / 'README.md'}: not a readable")
    assert "not a file written by torch.save" in message and "expected a .pt file" in message
    assert "weights_only" not in message and "arbitrary code" not in message  # torch's advice, not ours
    torch.save({"model": {}, "optimizer": torch.optim.SGD}, tmp_path / "pickled.pt")  # a pickled class
    with pytest.raises(CheckpointError, match=r"holds a pickled torch\.optim\.sgd\.SGD, and only") as raised:
        load_checkpoint(tmp_path / "pickled.pt")
    assert "\n" not in str(raised.value)
    good = tmp_path / "good.pt"
    torch.save({"model": {"w": torch.ones(3)}}, good)
    (tmp_path / "cut.pt").write_bytes(good.read_bytes()[:200])  # a download cut short
    with pytest.raises(CheckpointError, match="cut.pt: not a readable .* damaged or truncated") as raised:
        load_checkpoint(tmp_path / "cut.pt")
    assert "\n" not in str(raised.value)
