"""timm architectures (CNNs, ViT / DeiT / Swin, MLP-Mixer / ResMLP) with the zoo interface.

The CNN↔Transformer setting of OFA-KD (Hao et al., "One-for-All: Bridge the Gap Between
Heterogeneous Architectures in Knowledge Distillation", NeurIPS 2023; github.com/Hao840/OFAKD,
timm models at 224×224 on CIFAR-100 upsampled), which the WKD paper's CNN↔Transformer table
follows. Models are built by ``timm.create_model(..., pretrained=False)``: nothing is
downloaded; teacher weights come from a file the user provides, as for every teacher.

Swin-P, the Swin student of OFA-KD's CIFAR-100 table, is not a timm model: OFA-KD registers it
as ``swin_pico_patch4_window7_224`` in its ``custom_model/swin_transformer.py`` (commit
``18476ce``), timm's ``SwinTransformer`` with patch 4, window 7, embed_dim 48, depths
(2, 2, 2, 2) and heads (2, 4, 8, 16). ``timm_swin_pico_patch4_window7_224`` is the same class
with the same arguments (timm's Swin-T entry point with those fields overridden; Swin-T already
has patch 4 and window 7, they are restated for the record).

**One feature form for every family.** ``feats["feats"][-1]`` is always a (B, C, H, W) map:

* CNNs (ResNet, MobileNetV2, ConvNeXt): the output of ``forward_features``, as is;
* Swin: its (B, H, W, C) output, permuted;
* ViT / DeiT / MLP-Mixer / ResMLP: the patch tokens (class / distillation tokens dropped),
  (B, N, D) reshaped to (B, D, √N, √N) in patch order.

Why tokens become a map (and not both sides pooled to statistics): WKD-F models each channel
as a Gaussian over spatial positions; a patch token *is* a spatial position and an embedding
dimension *is* a channel, so the reshape gives exactly the per-channel sample that a CNN map
gives, keeps each token's place (needed by the spatial grid, ``spatial_grid`` > 1), and lets
the existing projectors (1×1 conv, or the stride-2 / transposed conv when one side is 14×14
and the other 7×7) map the student onto the teacher in both directions, CNN→Transformer and
Transformer→CNN. Only the final map is exposed (``feats`` has one entry).

``pooled_feat`` is timm's pre-logits vector; ``get_classifier()`` is timm's head ``nn.Linear``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from torch import Tensor, nn

from wkd_core.models._base import FeatureDict, ZooModel, register_model

TOKENS, NHWC, NCHW = "tokens", "nhwc", "nchw"

# OFA-KD's Swin-P (custom_model/swin_transformer.py, Hao840/OFAKD@18476ce)
SWIN_PICO = {
    "patch_size": 4, "window_size": 7, "embed_dim": 48, "depths": (2, 2, 2, 2),
    "num_heads": (2, 4, 8, 16),
}  # fmt: skip

# name → (timm name, layout of forward_features, timm keyword arguments)
TIMM_ARCHS: dict[str, tuple[str, str, dict]] = {
    "timm_resnet18": ("resnet18", NCHW, {}),
    "timm_mobilenetv2_100": ("mobilenetv2_100", NCHW, {}),
    "timm_convnext_tiny": ("convnext_tiny", NCHW, {}),
    "timm_swin_tiny_patch4_window7_224": ("swin_tiny_patch4_window7_224", NHWC, {}),
    "timm_swin_pico_patch4_window7_224": ("swin_tiny_patch4_window7_224", NHWC, SWIN_PICO),
    "timm_vit_small_patch16_224": ("vit_small_patch16_224", TOKENS, {}),
    "timm_deit_tiny_patch16_224": ("deit_tiny_patch16_224", TOKENS, {}),
    "timm_mixer_b16_224": ("mixer_b16_224", TOKENS, {}),
    "timm_resmlp_12_224": ("resmlp_12_224", TOKENS, {}),
}
# 32×32 models small enough for CPU tests: a 2-block ViT with 4×4 patches (8×8 tokens, the
# size of resnet8's last map).
TINY_ARCHS: dict[str, tuple[str, str, dict]] = {
    "vit_tiny_p4_32": (
        "vit_tiny_patch16_224",
        TOKENS,
        {"img_size": 32, "patch_size": 4, "embed_dim": 64, "depth": 2, "num_heads": 2},
    ),
}


def tokens_to_map(tokens: Tensor, num_prefix_tokens: int = 0) -> Tensor:
    """(B, P + N, D) tokens → (B, D, √N, √N) map of the N patch tokens (row-major patches)."""
    patches = tokens[:, num_prefix_tokens:]
    batch, count, dim = patches.shape
    side = math.isqrt(count)
    if side * side != count:
        raise ValueError(f"{count} patch tokens do not form a square grid")
    return patches.transpose(1, 2).reshape(batch, dim, side, side)


class TimmModel(ZooModel):
    """A timm model behind the zoo interface (``forward_features`` → logits and a map)."""

    def __init__(self, model: nn.Module, layout: str) -> None:
        super().__init__()
        self.model = model
        self.layout = layout
        # State dicts in timm's own key format (no "model." level), so that a timm checkpoint
        # (e.g. OFA-KD's CIFAR-100 teachers) loads with strict=True and saved students load
        # into timm directly.
        self._register_state_dict_hook(_drop_model_level)
        self._register_load_state_dict_pre_hook(_add_model_level)

    def forward_features(self, x: Tensor) -> tuple[Tensor, FeatureDict]:
        out = self.model.forward_features(x)
        pooled = self.model.forward_head(out, pre_logits=True)
        logits = self.model.get_classifier()(pooled)
        feat = self.feature_map(out)
        return logits, {"feats": [feat], "preact_feats": [feat], "pooled_feat": pooled}

    def feature_map(self, out: Tensor) -> Tensor:
        """``forward_features`` output → (B, C, H, W)."""
        if self.layout == NHWC:
            return out.permute(0, 3, 1, 2)
        if self.layout == TOKENS:
            return tokens_to_map(out, getattr(self.model, "num_prefix_tokens", 0))
        return out

    def get_classifier(self) -> nn.Linear:
        head = self.model.get_classifier()
        assert isinstance(head, nn.Linear), type(head)
        return head


def _drop_model_level(module, state_dict, prefix, local_metadata) -> None:
    inner = prefix + "model."
    for key in [k for k in state_dict if k.startswith(inner)]:
        state_dict[prefix + key[len(inner) :]] = state_dict.pop(key)


def _add_model_level(state_dict, prefix, *args) -> None:
    inner = prefix + "model."
    for key in [k for k in state_dict if k.startswith(prefix) and not k.startswith(inner)]:
        state_dict[inner + key[len(prefix) :]] = state_dict.pop(key)


def _factory(timm_name: str, layout: str, options: dict) -> Callable[..., TimmModel]:
    def create(*, num_classes: int, **kwargs) -> TimmModel:
        import timm  # lazily: only these architectures need it

        model = timm.create_model(
            timm_name, pretrained=False, num_classes=num_classes, **{**options, **kwargs}
        )
        return TimmModel(model, layout)

    with_options = f" with {options}" if options else ""
    create.__doc__ = (
        f"timm ``{timm_name}``{with_options} ({layout} features), random initialisation."
    )
    return create


for _name, (_timm, _layout, _options) in TIMM_ARCHS.items():
    register_model(_name, family="timm", input_kind="imagenet")(_factory(_timm, _layout, _options))
for _name, (_timm, _layout, _options) in TINY_ARCHS.items():
    register_model(_name, family="timm", input_kind="cifar")(_factory(_timm, _layout, _options))
