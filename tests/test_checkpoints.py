"""Released checkpoints: parity with the reference implementation, the hub path, our own format."""

from __future__ import annotations

import json
from pathlib import Path

import httpx2
import pytest
import torch
from huggingface_hub.errors import RemoteEntryNotFoundError
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import uplift.hub
from tests.conftest import OFFICIAL
from tests.helpers import tiny_config, tiny_vae_config
from uplift import CheckpointMismatchError, UPLiFT, UPLiFTConfig, WeightsUnavailableError

CASES = sorted(p.name[: -len(".case.safetensors")] for p in OFFICIAL.glob("*.case.safetensors"))


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def check_case(model: UPLiFT, case_dir: Path, name: str) -> dict[str, float]:
    """Run one fixture case through ``model`` and return the relative error of every stored output."""
    case = load_file(case_dir / f"{name}.case.safetensors")
    with safe_open(case_dir / f"{name}.case.safetensors", "pt") as f:
        meta = json.loads(f.metadata()["meta"])
    image, feats, stride = case["input.image"], case["input.features"], meta["channel_stride"]
    with torch.no_grad():
        outputs = dict(zip((f"step{k}" for k in range(1, meta["iterations"] + 1)),
                           model(image, feats, steps=meta["iterations"], return_all_steps=True)))
        if meta.get("outsize"):
            outputs["final"] = model(image, feats, steps=meta["iterations"], output_size=tuple(meta["outsize"]))
    errors = {}
    for key, expected in case.items():
        if not key.startswith("output."):
            continue
        _, step, stat = key.split(".")
        out = outputs[step]
        ours = {"channels_sub": out[:, ::stride], "channel_mean": out.mean((0, 2, 3)), "channel_std": out.std((0, 2, 3))}[stat]
        assert ours.shape == expected.shape, f"{key}: shape {tuple(ours.shape)} vs expected {tuple(expected.shape)}"
        errors[key] = _rel(ours, expected)
    assert {k.split(".")[1] for k in errors} == set(outputs), "every step must be checked"
    return errors


@pytest.mark.parametrize("name", CASES or ["<no shared fixtures>"])
def test_parity_with_reference_release(official_dir, name: str) -> None:
    model = UPLiFT.from_official(official_dir / f"{name}.weights.safetensors", official_dir / f"{name}.yaml")
    with safe_open(official_dir / f"{name}.case.safetensors", "pt") as f:
        assert model.num_parameters() == json.loads(f.metadata()["meta"])["n_params"]
    errors = check_case(model, official_dir, name)
    worst = max(errors, key=errors.get)
    assert errors[worst] <= 1e-4, f"{worst}: relative L2 error {errors[worst]:.2e}"


def test_from_official_accepts_state_dict_dict_config_and_preset_name(official_dir) -> None:
    import yaml

    state = load_file(official_dir / "dinov3_splus16_iter2_batch2.weights.safetensors")
    config = yaml.safe_load((official_dir / "dinov3_splus16_iter2_batch2.yaml").read_text())
    for cfg in (config, "dinov3-splus16"):
        model = UPLiFT.from_official(state, cfg)
        assert max(check_case(model, official_dir, "dinov3_splus16_iter2_batch2").values()) <= 1e-4


def _not_on_hub(url: str) -> RemoteEntryNotFoundError:
    return RemoteEntryNotFoundError("404", response=httpx2.Response(404, request=httpx2.Request("GET", url)))


@pytest.mark.parametrize("config_on_hub", [True, False])
def test_from_pretrained_downloads_release_from_hub(official_dir, monkeypatch, config_on_hub: bool) -> None:
    """Only the download call is replaced: it hands back the fixture files for the release's names."""
    calls = []

    def fake_download(repo_id: str, filename: str, **kwargs) -> str:
        calls.append((repo_id, filename))
        if filename.endswith(".safetensors"):
            return str(official_dir / "dinov2_s14_iter4.weights.safetensors")
        if config_on_hub:
            return str(official_dir / "dinov2_s14_iter4.yaml")
        raise _not_on_hub(f"https://hub/{repo_id}/{filename}")

    monkeypatch.setattr(uplift.hub, "hf_hub_download", fake_download)
    model = UPLiFT.from_pretrained("dinov2-s14")
    assert calls == [("UPLiFT-upsampler/uplift_dinov2-s14", "uplift_dinov2-s14.safetensors"),
                     ("UPLiFT-upsampler/uplift_dinov2-s14", "uplift_dinov2-s14.yaml")]
    assert not model.training
    assert max(check_case(model, official_dir, "dinov2_s14_iter4").values()) <= 1e-4


def test_from_pretrained_offline_names_the_way_out() -> None:
    with pytest.raises(WeightsUnavailableError, match=r"uplift_sd1.5vae.safetensors.*from_pretrained\('/path/to/"):
        UPLiFT.from_pretrained("sd15-vae")


def test_from_pretrained_unknown_name() -> None:
    with pytest.raises(ValueError, match="neither a released UPLiFT model"):
        UPLiFT.from_pretrained("dinov2-g14")


def test_save_and_load_our_format_round_trip(tmp_path) -> None:
    torch.manual_seed(0)
    model = UPLiFT(tiny_vae_config()).eval()
    model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    loaded = UPLiFT.from_pretrained(tmp_path / "m")
    assert loaded.config == model.config
    image, lat = torch.rand(2, 3, 16, 24), torch.randn(2, 4, 2, 3)
    with torch.no_grad():
        torch.manual_seed(1)
        expected = model(image, lat, steps=2)
        torch.manual_seed(1)
        torch.testing.assert_close(loaded(image, lat, steps=2), expected)
    (tmp_path / "m" / "config.json").unlink()  # the weights file carries its config in its metadata too
    assert UPLiFT.from_pretrained(tmp_path / "m" / "model.safetensors").config == model.config


def test_checkpoint_of_another_model_lists_what_does_not_match(tmp_path) -> None:
    save_file(UPLiFT(tiny_config(14)).state_dict(), tmp_path / "w.safetensors")
    with pytest.raises(CheckpointMismatchError) as err:
        model = UPLiFT(tiny_vae_config())
        from uplift.checkpoints import load_state_dict_strict

        load_state_dict_strict(model, load_file(tmp_path / "w.safetensors"))
    message = str(err.value)
    assert "missing from the checkpoint" in message and "more" in message
    assert "in the checkpoint but not in the model" in message and "running_mean" in message
    assert "shape mismatches" in message


def test_release_checkpoint_with_wrong_config(official_dir) -> None:
    state = load_file(official_dir / "dinov2_s14_iter4.weights.safetensors")
    del state["attender.conv1.bias"]
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointMismatchError, match=r"(?s)missing.*attender.conv1.bias.*not in the model.*extra.weight"):
        UPLiFT.from_official(state, official_dir / "dinov2_s14_iter4.yaml")
    with pytest.raises(CheckpointMismatchError, match=r"(?s)shape mismatches.*encoder.block_1.blocks.0.conv.0.weight: checkpoint \(32, 16, 3, 3\) vs model \(16, 16, 3, 3\)"):
        UPLiFT.from_official(official_dir / "dinov2_s14_iter4.weights.safetensors", official_dir / "sd15vae_small_iter2.yaml")


def test_config_json_is_plain_and_typed(tmp_path) -> None:
    UPLiFT(UPLiFTConfig.preset("dinov3-splus16")).save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    assert data["patch_size"] == 16 and data["encoder"][0] == {"widths": [16], "block": "single"}
