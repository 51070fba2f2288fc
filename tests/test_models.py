"""Models (asit.models, asit.heads): timm registration, lengths, heads, save / load, released layout."""

import argparse
import copy
import json

import pytest
import timm
import torch

import asit
from asit.audio import NormStats
from asit.heads import ProjectionHead, ReconstructionHead
from asit.models import (
    ASiT,
    build_asit,
    create_encoder,
    init_from_imagenet_vit,
    load_encoder,
    load_released_checkpoint,
    resize_pos_embed,
    save_encoder,
)

TINY = dict(depth=2, drop_path_rate=0.0)  # a 2-block ViT-Ti keeps every test fast on a CPU


def _tiny(num_frames=592, **kwargs):
    torch.manual_seed(0)
    return create_encoder("tiny", num_frames=num_frames, **{**TINY, **kwargs}).eval()


def _spec(b=2, t=592, seed=0):
    return torch.randn(b, 1, t, 128, generator=torch.Generator().manual_seed(seed))


def test_registered_models_and_base_parameter_count():
    assert {"asit_vit_tiny_patch16", "asit_vit_small_patch16", "asit_vit_base_patch16"} <= set(timm.list_models("asit_*"))
    base = timm.create_model("asit_vit_base_patch16", num_classes=0, device="meta")  # shapes only, no memory
    assert sum(p.numel() for p in base.parameters()) == 85_482_240
    assert base.patch_embed.grid_size == (37, 8)
    assert base.patch_embed.proj.in_channels == 1
    assert base.blocks[0].attn.qkv.bias is not None
    assert base.norm.eps == 1e-6 and base.blocks[0].norm1.eps == 1e-6
    assert base.blocks[0].attn.fused_attn  # PyTorch SDPA
    assert base.pos_embed.shape == (1, 1 + 37 * 8, 768)


def test_create_encoder_sizes_and_drop_path():
    enc = create_encoder("small", num_frames=128, depth=1)
    assert enc.embed_dim == 384 and enc.blocks[0].attn.num_heads == 6 and enc.patch_embed.grid_size == (8, 8)
    enc = create_encoder("tiny", depth=12)
    assert enc.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)  # the student's stochastic depth
    with pytest.raises(ValueError):
        create_encoder("huge")


def test_other_lengths_run_and_match_a_model_built_for_them():
    enc = _tiny()
    tokens = enc.forward_features(_spec(t=192))  # a 2 s local crop through the 6 s model
    assert tokens.shape == (2, 1 + 12 * 8, 192)
    # Interpolating on the fly equals building for 192 frames from the resized weights.
    enc192 = _tiny(num_frames=192)
    enc192.load_state_dict(resize_pos_embed(enc.state_dict(), (12, 8)))
    torch.testing.assert_close(enc192.forward_features(_spec(t=192)), tokens)


def test_resize_pos_embed_infers_the_grid_and_rejects_what_it_cannot():
    sd = {"pos_embed": torch.randn(1, 1 + 37 * 8, 16), "other": torch.ones(1)}
    out = resize_pos_embed(sd, (64, 8))
    assert out["pos_embed"].shape == (1, 1 + 64 * 8, 16)
    assert torch.equal(out["pos_embed"][:, 0], sd["pos_embed"][:, 0])  # class token untouched
    assert out["other"] is sd["other"] and sd["pos_embed"].shape[1] == 297  # a copy, input intact
    assert resize_pos_embed(sd, (37, 8))["pos_embed"] is sd["pos_embed"]
    with pytest.raises(ValueError, match="old_grid"):
        resize_pos_embed({"pos_embed": torch.randn(1, 1 + 196, 16)}, (37, 8))
    assert resize_pos_embed({"pos_embed": torch.randn(1, 1 + 196, 16)}, (37, 8), old_grid=(14, 14))["pos_embed"].shape[1] == 297


def test_timm_loads_weights_saved_at_another_length(tmp_path):
    enc = _tiny()
    save_encoder(enc, tmp_path / "enc")
    long = timm.create_model(
        "asit_vit_tiny_patch16",
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(tmp_path / "enc" / "model.safetensors")),
        img_size=(1024, 128),
        depth=2,
    )
    expected = resize_pos_embed(enc.state_dict(), (64, 8))
    for name, value in long.state_dict().items():
        torch.testing.assert_close(value, expected[name], msg=name)
    # A whole ASiT state dict (encoder + heads, DDP prefix) loads its encoder part.
    model = build_asit("tiny", global_dim=16, local_dim=8, depth=2)
    torch.save({"module." + k: v for k, v in model.state_dict().items()}, tmp_path / "asit.pth")
    enc2 = timm.create_model("asit_vit_tiny_patch16", pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "asit.pth")), depth=2)
    torch.testing.assert_close(enc2.pos_embed, model.encoder.pos_embed)


def test_timm_load_explains_an_impossible_grid(tmp_path):
    from safetensors.torch import save_file

    sd = _tiny().state_dict()
    sd["pos_embed"] = torch.randn(1, 1 + 13, 192)  # 13 tokens: no grid with 8 mel patches
    save_file(sd, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match="frequency patches"):
        timm.create_model("asit_vit_tiny_patch16", pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "bad.safetensors")), depth=2)


def test_save_and_load_encoder_round_trip(tmp_path):
    enc = _tiny()
    stats = NormStats(-4.27, 4.57)
    path = save_encoder(enc, tmp_path / "encoder", extra={"preset": "smoke", "epoch": 3}, stats=stats)
    config = json.loads((path / "config.json").read_text())
    assert config["architecture"] == "asit_vit_tiny_patch16" and config["img_size"] == [592, 128]
    assert config["patch_size"] == [16, 16] and config["fbank"]["num_mel_bins"] == 128
    assert config["fbank"]["frame_shift_ms"] == 10.0 and config["fbank"]["sample_rate"] == 16000
    assert config["norm_stats"] == {"mean": -4.27, "std": 4.57}
    assert config["asit_version"] == asit.__version__ and config["preset"] == "smoke" and config["epoch"] == 3

    loaded = load_encoder(path, depth=2).eval()  # depth: a non-standard test model
    assert loaded.asit_config["architecture"] == "asit_vit_tiny_patch16"
    x = _spec()
    torch.testing.assert_close(loaded.forward_features(x), enc.forward_features(x))

    short = load_encoder(path / "model.safetensors", num_frames=128, num_classes=5, depth=2)
    assert short.pos_embed.shape == (1, 1 + 8 * 8, 192)
    assert short(_spec(t=128)).shape == (2, 5)

    # A fine-tuned encoder with a classifier loads with it, or without it as a feature extractor.
    tuned = _tiny(num_classes=5)
    save_encoder(tuned, tmp_path / "tuned")
    again = load_encoder(tmp_path / "tuned", num_classes=5, depth=2).eval()
    torch.testing.assert_close(again(_spec()), tuned(_spec()))
    assert load_encoder(tmp_path / "tuned", depth=2).num_classes == 0


def test_init_from_imagenet_vit():
    torch.manual_seed(0)
    imagenet = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=2)  # random "ImageNet" ViT
    enc = _tiny()
    missing, unexpected = init_from_imagenet_vit(enc, imagenet.state_dict())
    assert missing == [] and unexpected == []
    src = imagenet.state_dict()
    torch.testing.assert_close(enc.patch_embed.proj.weight, src["patch_embed.proj.weight"].sum(1, keepdim=True))
    torch.testing.assert_close(enc.blocks[1].mlp.fc2.weight, src["blocks.1.mlp.fc2.weight"])
    assert enc.pos_embed.shape == (1, 297, 192)
    torch.testing.assert_close(enc.pos_embed[:, 0], src["pos_embed"][:, 0])


def test_projection_head():
    head = ProjectionHead(32, hidden_dim=64, bottleneck_dim=16, global_dim=100, local_dim=50)
    g, loc = head(torch.randn(3, 1 + 6, 32))
    assert g.shape == (3, 100) and loc.shape == (3, 6, 50)
    for layer in (head.global_layer, head.local_layer):
        torch.testing.assert_close(layer.weight.norm(dim=1), torch.ones(layer.weight.shape[0]))  # norm fixed at 1
        assert not layer.parametrizations.weight.original0.requires_grad
    assert len(head.last_layer_parameters()) == 2
    # Outputs are cosine similarities with unit prototypes: bounded by 1.
    assert g.abs().max() <= 1 + 1e-5


def test_reconstruction_head_paints_each_patch_from_its_own_token():
    head = ReconstructionHead(32, patch_size=16, in_chans=1).eval()
    tokens = torch.randn(1, 3 * 2, 32)
    out = head(tokens, (3, 2))
    assert out.shape == (1, 1, 48, 32)
    changed = tokens.clone()
    changed[0, 3] += 1.0  # token 3 = time patch 1, frequency patch 1
    diff = (head(changed, (3, 2)) - out).abs()[0, 0]
    assert diff[16:32, 16:32].sum() > 0
    diff[16:32, 16:32] = 0
    assert diff.sum() == 0
    assert sum(p.numel() for p in ReconstructionHead(768).mlp.parameters()) == 2 * (768 * 768 + 768) + 768 * 128 + 128


def test_asit_forward_teacher_copy_and_local_crops():
    torch.manual_seed(0)
    model = build_asit("tiny", global_dim=64, local_dim=32, depth=2, drop_path_rate=0.0).eval()
    out = model(_spec())
    assert out.global_out.shape == (2, 64) and out.local_out.shape == (2, 296, 32)
    assert out.reconstruction.shape == (2, 1, 592, 128) and out.tokens.shape == (2, 297, 192)
    teacher = copy.deepcopy(model)
    t_out = teacher(_spec(), return_reconstruction=False)
    assert t_out.reconstruction is None
    torch.testing.assert_close(t_out.global_out, out.global_out)
    local = model(_spec(t=192), return_reconstruction=False)
    assert local.global_out.shape == (2, 64) and local.local_out.shape == (2, 96, 32)
    with pytest.raises(ValueError, match="multiples of the patch size"):
        model(_spec(t=600))


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = build_asit("tiny", global_dim=16, local_dim=8, depth=2, drop_path_rate=0.0)
    x = _spec(t=64)

    def grads():
        model.zero_grad()
        out = model(x)
        (out.global_out.sum() + out.local_out.sum() + out.reconstruction.sum()).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = grads()
    model.set_grad_checkpointing(True)
    assert model.encoder.grad_checkpointing
    ckpt = grads()
    assert plain.keys() == ckpt.keys()
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], msg=name)


def _released_layout(model: ASiT, ddp: bool, head_name: str = "head_cls") -> dict:
    """Our model's weights under the released code's names (FullPipeline, old weight norm)."""
    renames = {
        "projection.global_layer.parametrizations.weight.original0": f"{head_name}.cls_layer.weight_g",
        "projection.global_layer.parametrizations.weight.original1": f"{head_name}.cls_layer.weight_v",
        "projection.local_layer.parametrizations.weight.original0": f"{head_name}.data_layer.weight_g",
        "projection.local_layer.parametrizations.weight.original1": f"{head_name}.data_layer.weight_v",
    }
    out = {}
    for key, value in model.state_dict().items():
        if key in renames:
            new = renames[key]
        elif key.startswith("encoder."):
            new = "backbone." + key[len("encoder.") :]
        elif key.startswith("projection."):
            new = f"{head_name}." + key[len("projection.") :]
        else:
            new = key.replace("reconstruction.conv_transpose.", "head_recons.convTrans.").replace("reconstruction.", "head_recons.")
        out[("module." if ddp else "") + new] = value.clone()
    return out


@pytest.mark.parametrize("head_name", ["head_cls", "head"])
def test_load_released_checkpoint(tmp_path, head_name):
    torch.manual_seed(0)
    student = build_asit("tiny", global_dim=16, local_dim=8, depth=2, drop_path_rate=0.0).eval()
    teacher = copy.deepcopy(student)
    with torch.no_grad():
        teacher.encoder.cls_token.add_(1.0)  # tell them apart
    path = tmp_path / "checkpoint.pth"
    torch.save(
        {
            "student": _released_layout(student, ddp=True, head_name=head_name),
            "teacher": _released_layout(teacher, ddp=False, head_name=head_name),
            "epoch": 100,
            "args": argparse.Namespace(arch="vit_tiny", num_frames=592),
        },
        path,
    )
    for which, reference in (("teacher", teacher), ("student", student)):
        parts = load_released_checkpoint(path, which=which)
        model = build_asit("tiny", global_dim=16, local_dim=8, depth=2, drop_path_rate=0.0).eval()
        model.encoder.load_state_dict(parts["encoder"])
        model.projection.load_state_dict(parts["projection"])
        model.reconstruction.load_state_dict(parts["reconstruction"])
        x = _spec(t=64)
        got, want = model(x), reference(x)
        torch.testing.assert_close(got.global_out, want.global_out)
        torch.testing.assert_close(got.reconstruction, want.reconstruction)
    parts = load_released_checkpoint(path, num_frames=1024)
    assert parts["encoder"]["pos_embed"].shape == (1, 1 + 64 * 8, 192)


def test_a_shallow_encoder_saves_and_loads_with_its_depth(tmp_path):
    """The CPU presets pretrain fewer blocks than 12; the saved encoder must come back as it was."""
    from asit.models import create_encoder, load_encoder, save_encoder

    encoder = create_encoder("tiny", num_frames=64, depth=2, drop_path_rate=0.0).eval()
    save_encoder(encoder, tmp_path / "enc")
    loaded = load_encoder(tmp_path / "enc").eval()
    assert len(loaded.blocks) == 2
    x = torch.randn(2, 1, 64, 128)
    torch.testing.assert_close(loaded(x), encoder(x))
    assert len(load_encoder(tmp_path / "enc", num_frames=128).blocks) == 2


def test_a_non_finite_encoder_is_refused_and_names_its_tensors(tmp_path):
    from asit.models import NonFiniteWeightsError, check_finite, nonfinite_tensors

    encoder = _tiny(num_frames=64)
    assert nonfinite_tensors(encoder) == []
    check_finite(encoder)
    with torch.no_grad():
        encoder.pos_embed[0, 3, 0] = float("nan")
        encoder.blocks[0].attn.qkv.weight[0, 0] = float("inf")
    assert nonfinite_tensors(encoder) == ["pos_embed", "blocks.0.attn.qkv.weight"]
    with pytest.raises(NonFiniteWeightsError, match="2 tensor\\(s\\): pos_embed, blocks.0.attn.qkv.weight"):
        save_encoder(encoder, tmp_path / "enc")
    assert not (tmp_path / "enc").exists()  # nothing written


@pytest.mark.parametrize("field, value, message", [
    ("embed_dim", 1_000_000, "embed_dim 1000000 is not a whole number in \\[8, 4096\\]"),
    ("depth", 100_000, "depth 100000 is not"),
    ("depth", 2.5, "depth 2.5 is not"),
    ("num_heads", 5, "embed_dim 192 is not divisible by num_heads 5"),
    ("architecture", "hf-hub:timm/vit_base_patch16_224", "architecture 'hf-hub:timm/vit_base_patch16_224' is not one of"),
    ("img_size", [10**9, 128], "img_size \\[1000000000, 128\\] is not"),
])
def test_a_crafted_encoder_config_is_refused_before_anything_is_built(tmp_path, field, value, message):
    from asit.models import EncoderConfigError

    save_encoder(_tiny(num_frames=64), tmp_path / "enc")
    config_path = tmp_path / "enc" / "config.json"
    config = json.loads(config_path.read_text())
    config[field] = value
    config_path.write_text(json.dumps(config))
    with pytest.raises(EncoderConfigError, match=f"^{config_path}: {message}"):
        load_encoder(tmp_path / "enc")
    config_path.write_text("{not json")
    with pytest.raises(EncoderConfigError, match=f"^{config_path}: not a readable encoder config"):
        load_encoder(tmp_path / "enc")
