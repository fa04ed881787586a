"""A batch whose images are all of the padded size needs no attention mask: the model decides
it from the image sizes (Python numbers, no read of the device) and then gives the attention
no bias at all, so that PyTorch can pick its fused GPU kernels; the outputs are those of the
bias path (a bias of zeros)."""

from pathlib import Path

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.structures import ImageList
from sam_detr.config import get_sam_detr_cfg
from sam_detr.modeling import attention
from sam_detr.modeling.images import is_padded

TINY_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo" / "tiny_test.yaml"


def test_padding_is_decided_from_the_sizes():
    same = ImageList.from_tensors([torch.zeros(3, 32, 48), torch.zeros(3, 32, 48)])
    assert not is_padded(same)
    assert is_padded(ImageList.from_tensors([torch.zeros(3, 32, 48), torch.zeros(3, 30, 48)]))
    assert is_padded(ImageList.from_tensors([torch.zeros(3, 30, 40)], size_divisibility=32))


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["MODEL.SAM_DETR.SMCA", False],
        ["MODEL.SAM_DETR.SEMANTIC_ALIGNED_MATCHING", False],
    ],
    ids=["smca", "no_smca", "baseline"],
)
def test_unpadded_batch_attends_without_bias_and_gives_the_bias_path_outputs(
    overrides, monkeypatch
):
    cfg = get_sam_detr_cfg(str(TINY_CONFIG), ["MODEL.DEVICE", "cpu"] + overrides)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    images = [torch.randint(0, 256, (3, 64, 80), dtype=torch.uint8) for _ in range(2)]
    batch, mask = model.preprocess_image([{"image": image} for image in images])
    assert not mask.any()

    masks = []
    sdpa = attention.F.scaled_dot_product_attention

    def recording_sdpa(*args, attn_mask=None, **kwargs):
        masks.append(attn_mask)
        return sdpa(*args, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", recording_sdpa)
    with torch.no_grad():
        outputs = model.inference([{"image": image} for image in images], do_postprocess=False)
        assert masks and all(m is None for m in masks)  # the encoder's, the decoder's
        masks.clear()
        logits, boxes = model.forward_outputs(batch.tensor, mask, padded=True)
        assert any(m is not None for m in masks) or not cfg.MODEL.SAM_DETR.ENC_LAYERS
    torch.testing.assert_close(outputs["pred_logits"], logits[-1], rtol=0, atol=0)
    torch.testing.assert_close(outputs["pred_boxes"], boxes[-1], rtol=0, atol=0)
