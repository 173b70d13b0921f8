"""timm architectures behind the zoo interface, the token → map form WKD-F uses, and the
CNN↔Transformer pairs: WKD-F / WKD-L in both directions, end to end on mnist5k."""

from __future__ import annotations

import pytest
import torch

from service.spec import validate_job_spec
from wkd_core.data.cifar_upsampled import upsampling_transform
from wkd_core.distillers import create_distiller
from wkd_core.models import create_model, feature_shapes, model_info
from wkd_core.models.timm_models import TIMM_ARCHS, tokens_to_map
from wkd_core.pipeline import run_job


def test_tokens_to_map_puts_patch_tokens_at_their_grid_positions():
    batch, prefix, side, dim = 2, 1, 3, 5
    tokens = torch.randn(batch, prefix + side * side, dim)
    fmap = tokens_to_map(tokens, prefix)
    assert fmap.shape == (batch, dim, side, side)
    for i in range(side):
        for j in range(side):
            torch.testing.assert_close(fmap[:, :, i, j], tokens[:, prefix + i * side + j])
    with pytest.raises(ValueError, match="square"):
        tokens_to_map(torch.randn(1, 5, 2))


EXPECTED_MAPS = {  # (C, H, W) of feats[-1] at 224×224
    "timm_resnet18": (512, 7, 7),
    "timm_mobilenetv2_100": (1280, 7, 7),
    "timm_convnext_tiny": (768, 7, 7),
    "timm_swin_tiny_patch4_window7_224": (768, 7, 7),
    "timm_swin_pico_patch4_window7_224": (384, 7, 7),
    "timm_vit_small_patch16_224": (384, 14, 14),
    "timm_deit_tiny_patch16_224": (192, 14, 14),
    "timm_mixer_b16_224": (768, 14, 14),
    "timm_resmlp_12_224": (384, 14, 14),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TIMM_ARCHS))
def test_timm_model_logits_equal_timm_forward_and_give_a_map(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=100).eval()
    assert model_info(name).input_kind == "imagenet" and list(EXPECTED_MAPS) == list(TIMM_ARCHS)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        logits, feats = model.forward_features(x)
        torch.testing.assert_close(logits, model.model(x))  # timm's own forward
    assert tuple(feats["feats"][-1].shape[1:]) == EXPECTED_MAPS[name]
    assert model.get_classifier().out_features == 100
    assert feats["pooled_feat"].shape[1] == model.get_classifier().in_features


def _swin_parameter_count(embed_dim, depths, num_heads, window, patch, num_classes):
    """Swin's parameters from its hyper-parameters (Liu et al. 2021, timm's layout): patch
    embedding conv + LayerNorm; per block two LayerNorms, qkv and output projections, a
    (2w−1)² × heads relative-position table, an MLP of ratio 4; per patch merging a LayerNorm
    over 4C and a bias-free 4C → 2C linear; final LayerNorm; linear head."""
    total = 3 * patch * patch * embed_dim + embed_dim + 2 * embed_dim
    for stage, (depth, heads) in enumerate(zip(depths, num_heads, strict=True)):
        d = embed_dim * 2**stage
        if stage > 0:
            total += 2 * (2 * d) + (2 * d) * d  # merging the previous stage: norm 4C', 4C'→2C'
        per_block = 2 * d + (3 * d * d + 3 * d) + (2 * window - 1) ** 2 * heads + (d * d + d)
        per_block += 2 * d + (4 * d * d + 4 * d) + (4 * d * d + d)
        total += depth * per_block
    final = embed_dim * 2 ** (len(depths) - 1)
    return total + 2 * final + final * num_classes + num_classes


def test_swin_pico_is_ofa_kds_swin_p_and_gives_wkd_f_a_map():
    """OFA-KD's Swin-P (Hao840/OFAKD custom_model/swin_transformer.py): timm's SwinTransformer,
    patch 4, window 7, embed_dim 48, depths (2, 2, 2, 2), heads (2, 4, 8, 16)."""
    import timm

    torch.manual_seed(0)
    model = create_model("timm_swin_pico_patch4_window7_224", num_classes=100).eval()
    assert type(model.model) is timm.models.swin_transformer.SwinTransformer
    count = sum(p.numel() for p in model.parameters())
    assert count == _swin_parameter_count(48, (2, 2, 2, 2), (2, 4, 8, 16), 7, 4, 100) == 5_160_496
    direct = timm.models.swin_transformer.SwinTransformer(
        patch_size=4, window_size=7, embed_dim=48, depths=(2, 2, 2, 2), num_heads=(2, 4, 8, 16),
        num_classes=100,
    )  # fmt: skip
    assert {k: v.shape for k, v in direct.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        logits, feats = model.forward_features(x)
        torch.testing.assert_close(logits, model.model(x))
        nhwc = model.model.forward_features(x)
    fmap = feats["feats"][-1]
    assert fmap.shape == (1, 384, 7, 7)
    torch.testing.assert_close(fmap, nhwc.permute(0, 3, 1, 2))  # channel c at (h, w)
    torch.testing.assert_close(feats["pooled_feat"], fmap.mean(dim=(2, 3)))


@pytest.mark.slow
def test_wkd_f_distils_a_cnn_into_swin_pico_at_224():
    """The ConvNeXt-T→Swin-P direction with the cheaper ResNet-18 as the CNN (both 7×7)."""
    torch.manual_seed(0)
    s = create_model("timm_swin_pico_patch4_window7_224", num_classes=100)
    t = create_model("timm_resnet18", num_classes=100).eval()
    assert feature_shapes(s, (224, 224))[-1] == (384, 7, 7)
    distiller = create_distiller(
        "wkd_f", student=s, teacher=t, projector="conv1x1", spatial_grid=1,
        input_size=(224, 224), cosine_decay_epoch=150,
    )  # fmt: skip
    out = distiller(torch.randn(2, 3, 224, 224), torch.randint(0, 100, (2,)), total_epochs=300)
    assert torch.isfinite(out.losses["loss_wkd_f"]) and out.losses["loss_wkd_f"].item() > 0
    out.total.backward()
    assert s.model.patch_embed.proj.weight.grad is not None


def test_cifar_upsampling_transform_gives_224_images():
    from PIL import Image

    image = Image.fromarray((torch.rand(32, 32, 3) * 255).byte().numpy())
    assert upsampling_transform(train=True)(image).shape == (3, 224, 224)
    assert upsampling_transform(train=False)(image).shape == (3, 224, 224)


@pytest.mark.parametrize(("student", "teacher"), [("vit_tiny_p4_32", "resnet8"),
                                                  ("resnet8", "vit_tiny_p4_32")])  # fmt: skip
def test_wkd_f_between_tokens_and_a_cnn_map_in_both_directions(student, teacher):
    torch.manual_seed(0)
    s, t = create_model(student, num_classes=10), create_model(teacher, num_classes=10)
    assert feature_shapes(s)[-1][1:] == feature_shapes(t)[-1][1:] == (8, 8)
    distiller = create_distiller(
        "wkd_f", student=s, teacher=t, projector="conv1x1", spatial_grid=2,
        input_size=(32, 32), cosine_decay_epoch=2,
    )  # fmt: skip
    out = distiller(torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,)), total_epochs=3)
    assert out.losses["loss_wkd_f"].item() > 0
    out.total.backward()
    grads = [p.grad for p in s.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize(
    ("student", "teacher", "method"),
    [("vit_tiny_p4_32", "resnet8", "wkd_f"), ("resnet8", "vit_tiny_p4_32", "wkd_l")],
)
def test_cnn_transformer_pair_runs_end_to_end_on_mnist5k(tmp_path, student, teacher, method):
    from wkd_core.artifacts import save_student

    teacher_path = save_student(create_model(teacher, num_classes=10), tmp_path / "t.safetensors")
    spec = validate_job_spec(
        {
            "method": method,
            "teacher": {"arch": teacher, "path": str(teacher_path)},
            "student": {"arch": student},
            "dataset": {"name": "mnist5k", "train_subset_per_class": 10},
            "params": {"projector": "conv1x1", "spatial_grid": 1} if method == "wkd_f" else {},
            "training": {"epochs": 1, "batch_size": 50, "lr_milestones": [], "num_workers": 0},
        }
    ).to_stored()
    result = run_job(spec, out_dir=tmp_path / "run", teacher_path=teacher_path, device="cpu")
    assert len(result.history) == 1 and 0 <= result.last_top1 <= 100
    assert (tmp_path / "run" / "student.safetensors").is_file()


def test_a_plain_timm_checkpoint_loads_strictly_and_saved_students_are_timm_files(tmp_path):
    import timm

    from wkd_core.artifacts import save_student
    from wkd_core.models import infer_num_classes, load_checkpoint_into, load_teacher_state

    torch.manual_seed(0)
    raw = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=32, patch_size=4,
        embed_dim=64, depth=2, num_heads=2,
    ).eval()  # fmt: skip
    ours = load_checkpoint_into(create_model("vit_tiny_p4_32", num_classes=10), raw.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), raw(x))
    saved = load_teacher_state(save_student(ours, tmp_path / "s.safetensors"))
    assert set(saved) == set(raw.state_dict()) and infer_num_classes(saved) == 10


def test_cifar100_224_training_transform_takes_ofa_kds_randaugment_and_erasing():
    from PIL import Image
    from timm.data.auto_augment import RandAugment
    from timm.data.random_erasing import RandomErasing

    plain = upsampling_transform(train=True).transforms
    recipe = upsampling_transform(
        train=True, randaugment="rand-m9-mstd0.5-inc1", random_erasing=0.25
    ).transforms
    assert [type(t) for t in recipe] == [
        type(plain[0]),
        type(plain[1]),
        RandAugment,
        *map(type, plain[2:]),
        RandomErasing,
    ]
    augment, erase = recipe[2], recipe[-1]
    assert len(augment.ops) == 15 and augment.num_layers == 2  # timm's increasing op set
    assert all(op.magnitude == 9 and op.prob == 0.5 for op in augment.ops)
    assert augment.ops[0].hparams["magnitude_std"] == 0.5
    assert augment.ops[0].hparams["translate_const"] == int(224 * 0.45)
    assert erase.probability == 0.25 and erase.mode == "pixel"
    assert upsampling_transform(train=False, randaugment="rand-m9").transforms[0].size == 256
    image = Image.fromarray((torch.rand(32, 32, 3) * 255).byte().numpy())
    torch.manual_seed(0)
    always = upsampling_transform(
        train=True, randaugment="rand-m9-mstd0.5-inc1", random_erasing=1.0
    )
    assert always(image).shape == (3, 224, 224)


def test_cifar100_224_is_never_made_device_resident():
    """Its upsampling crop (and RandAugment) cannot be reproduced by the device loader's
    32×32 crop-and-flip, so the host loader must run it (it once trained at 32×32 on GPUs)."""
    from tests.wkd_core.test_device_data import fake_cifar
    from wkd_core.data.device import device_images

    upsampled = fake_cifar(4, train=True)
    upsampled.transform = upsampling_transform(train=True)
    assert device_images(upsampled, device="cpu") is None
    evaluation = fake_cifar(4, train=False)
    evaluation.transform = upsampling_transform(train=False)
    assert device_images(evaluation, device="cpu") is None
    assert device_images(fake_cifar(4, train=True), device="cpu") is not None  # plain CIFAR


def test_drop_path_rate_reaches_the_timm_student():
    from wkd_core.job_parts import student_options

    spec = {"training": {"drop_path_rate": 0.1}}
    model = create_model("vit_tiny_p4_32", num_classes=10, **student_options(spec))
    rates = [m.drop_prob for m in model.modules() if type(m).__name__ == "DropPath"]
    assert rates and max(rates) == pytest.approx(0.1)  # timm's linear rule over the depth
    assert student_options({"training": {"drop_path_rate": None}}) == {}


@pytest.mark.slow
def test_every_ofa_kd_pair_runs_its_wkd_f_preset_at_224():
    """Each of the twelve CNN↔Transformer pairs (wkd_core/presets_paper.py) builds its WKD-F
    preset's distiller and gives a finite loss and student gradients on a 224 batch."""
    from wkd_core.presets import get_preset
    from wkd_core.presets_paper import OFA_PAIRS

    torch.manual_seed(0)
    teachers = {t: create_model(t, num_classes=100).eval() for t in {t for t, _ in OFA_PAIRS}}
    images, labels = torch.randn(2, 3, 224, 224), torch.randint(0, 100, (2,))
    for teacher, student in OFA_PAIRS:
        preset = get_preset(f"cifar100_224/wkd_f/{teacher}_{student}")
        s = create_model(student, num_classes=100)
        distiller = create_distiller(
            "wkd_f", student=s, teacher=teachers[teacher], input_size=(224, 224),
            **dict(preset.params),
        )  # fmt: skip
        out = distiller(images, labels, total_epochs=preset.training.epochs)
        assert torch.isfinite(out.losses["loss_wkd_f"]), (teacher, student)
        out.total.backward()
        grads = [p.grad for p in s.parameters() if p.requires_grad]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), (teacher, student)
