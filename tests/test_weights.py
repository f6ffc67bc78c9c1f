"""One weight resolver (`uplift.checkpoints.load_uplift`) for every kind of reference and every entry point."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tests.helpers import tiny_config, tiny_vae_config
from uplift import UPLiFT, UPLiFTConfig, WeightsError, load_uplift


def _same_weights(a: UPLiFT, b: UPLiFT) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k].float(), sb[k].float()) for k in sa)


@pytest.fixture
def model() -> UPLiFT:
    torch.manual_seed(0)
    return UPLiFT(tiny_config(16)).eval()


def test_save_pretrained_folder_and_its_weights_file_alone(tmp_path: Path, model: UPLiFT) -> None:
    folder = model.save_pretrained(tmp_path / "mine")
    assert _same_weights(load_uplift(folder), model)
    lone = shutil.copy(folder / "model.safetensors", tmp_path / "renamed.safetensors")  # config in the metadata
    loaded = load_uplift(lone)
    assert loaded.config == model.config and _same_weights(loaded, model)


def test_training_checkpoint(tmp_path: Path, model: UPLiFT) -> None:
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "uplift_config": model.config.to_dict()}, path)
    assert _same_weights(load_uplift(path), model)


def test_release_file_with_yaml_beside_by_hub_name_or_explicit_config(tmp_path: Path, official_dir: Path) -> None:
    weights, yaml = official_dir / "dinov2_s14_iter4.weights.safetensors", official_dir / "dinov2_s14_iter4.yaml"
    reference = UPLiFT.from_official(weights, yaml)
    pair = shutil.copy(weights, tmp_path / "release.safetensors")
    shutil.copy(yaml, tmp_path / "release.yaml")
    assert _same_weights(load_uplift(pair), reference)
    named = shutil.copy(weights, tmp_path / "uplift_dinov2-s14.safetensors")  # the hub's name says which release
    assert load_uplift(named).config == UPLiFTConfig.preset("dinov2-s14")
    bare = shutil.copy(weights, tmp_path / "bare.safetensors")
    assert load_uplift(bare, config="dinov3-splus16").patch_size == 16
    assert load_uplift(bare, config=yaml).config == reference.config


def test_a_file_it_cannot_identify_is_one_clear_error_never_a_guess(tmp_path: Path, model: UPLiFT) -> None:
    save_file(model.state_dict(), tmp_path / "mystery.safetensors")  # no metadata, no YAML, no hub name
    with pytest.raises(WeightsError, match=r"Cannot tell which UPLiFT model .*mystery.safetensors.*config"):
        load_uplift(tmp_path / "mystery.safetensors")
    (tmp_path / "weights.pt").write_bytes(b"x")
    with pytest.raises(WeightsError, match="unsupported weights file type '.pt'"):
        load_uplift(tmp_path / "weights.pt")
    with pytest.raises(WeightsError, match="neither a released UPLiFT model"):
        load_uplift("dinov2-s15")
    with pytest.raises(FileNotFoundError, match="train one with `uplift fit`"):
        load_uplift(tmp_path / "missing.ckpt")


def test_broken_files_name_themselves(tmp_path: Path, model: UPLiFT) -> None:
    folder = model.save_pretrained(tmp_path / "m")
    data = (folder / "model.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match=r"cut.safetensors is not a readable .safetensors file.*truncated"):
        load_uplift(tmp_path / "cut.safetensors")
    (tmp_path / "probe.ckpt").write_bytes(b"")
    torch.save({"state_dict": {"probe.weight": torch.zeros(2)}}, tmp_path / "probe.ckpt")
    with pytest.raises(WeightsError, match="not a checkpoint of an UPLiFT training task"):
        load_uplift(tmp_path / "probe.ckpt")


class _Exploit:
    def __reduce__(self):
        return (Path("/tmp/uplift-pwned").touch, ())


def test_a_pickle_with_code_is_refused_not_executed(tmp_path: Path) -> None:
    target = Path("/tmp/uplift-pwned")
    target.unlink(missing_ok=True)
    raw, zipped = tmp_path / "evil.ckpt", tmp_path / "evil_zip.ckpt"
    raw.write_bytes(pickle.dumps({"state_dict": {}, "uplift_config": {}, "x": _Exploit()}))
    torch.save({"state_dict": {}, "uplift_config": {}, "x": _Exploit()}, zipped)  # torch's own format
    for path in (raw, zipped):
        with pytest.raises(WeightsError, match=f"{path.name} holds Python objects .*nothing in it ran") as refused:
            load_uplift(path)
        assert "weights_only` set to `False`" not in str(refused.value)  # torch's advice to unpickle it anyway
    assert not target.exists()


# ------------------------------------------------------------------------------------------ entry points


@pytest.fixture
def spy(monkeypatch):
    """Record every call of the resolver, wherever it is called from."""
    import uplift.checkpoints as checkpoints

    calls = []
    real = checkpoints.load_uplift

    def recording(reference, config=None, **kwargs):
        calls.append((str(reference), config))
        return real(reference, config=config, **kwargs)

    monkeypatch.setattr(checkpoints, "load_uplift", recording)
    return calls


def test_every_entry_point_uses_the_one_resolver(tmp_path: Path, spy, capsys) -> None:
    import yaml

    from tasks.vae_uplift import build_uplift, build_vae
    from tests.conftest import REPO
    from uplift.backbones import BackboneConfig

    torch.manual_seed(0)
    dino = UPLiFT(tiny_config(14, channels=32)).save_pretrained(tmp_path / "dino")
    vae = UPLiFT(tiny_vae_config(patch_size=2)).save_pretrained(tmp_path / "vae")

    UPLiFT.from_pretrained(dino)  # Python
    from uplift.upsamplers import UPLiFTUpsampler

    UPLiFTUpsampler(weights=str(dino))  # Table 1 rows
    from uplift.upscale import main as upscale

    photo = tmp_path / "photo.png"
    from PIL import Image

    Image.new("RGB", (32, 24), (200, 10, 10)).save(photo)
    assert upscale([str(photo), str(tmp_path / "out"), "--weights", str(dino), "--vae-random", "--quiet"]) == 2
    assert "does not fit the UPLiFT model" in capsys.readouterr().err  # a DINO model is never read as the VAE's
    tiny_vae = BackboneConfig(**yaml.safe_load((REPO / "tests/conf/pieces/tiny_vae.yaml").read_text()))
    build_uplift(build_vae(tiny_vae), str(vae))  # evaluations (Tables 2-4)
    from tasks import PredictiveTask

    tiny_vit = BackboneConfig(pretrained=False, model_kwargs=dict(embed_dim=32, depth=1, num_heads=2, img_size=56))
    PredictiveTask(backbone=tiny_vit, uplift=tiny_config(14, channels=32), init_weights=str(dino))  # the CLI's tasks
    assert [c[0] for c in spy] == [str(dino)] * 3 + [str(vae), str(dino)]
