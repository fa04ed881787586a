"""The ``SAMDETR`` meta-architecture: image normalisation and padding masks, backbone,
input projection, sine position encoding, the SAM transformer, per-layer class heads;
losses in training and top-k detections at inference, in Detectron2's conventions.
Single-scale models read one backbone feature, multi-scale ones several (one input
projection each)."""

import math
from typing import Dict, List, Sequence, Tuple

import torch
from detectron2.config import CfgNode, configurable
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, detector_postprocess
from detectron2.structures import ImageList
from torch import nn

from ..config import validate_sam_detr_config
from ..weights import refuse_incomplete_load
from .autocast import AMP_SCOPES, Autocast, AutocastScope, build_autocast
from .backbone import build_sam_detr_backbone, downsample_mask
from .baseline import BaselineDETRTransformer
from .criterion import SetCriterion
from .detections import detections
from .images import check_image, is_padded, padding_mask
from .layer_spec import SAMLayerSpec
from .matcher import HungarianMatcher
from .position_encoding import MapPositionEmbedding
from .targets import prepare_targets
from .transformer import DetectionTransformer, SAMTransformer

__all__ = ["SAMDETR", "TRANSFORMERS"]

# MODEL.SAM_DETR.SEMANTIC_ALIGNED_MATCHING -> the transformer (False: the paper's baseline).
TRANSFORMERS = {True: SAMTransformer, False: BaselineDETRTransformer}


def _input_projection(in_channels: int, dim: int, gn_groups: int) -> nn.Sequential:
    """1x1 convolution to the transformer's width, then GroupNorm when ``gn_groups``."""
    proj: List[nn.Module] = [nn.Conv2d(in_channels, dim, kernel_size=1)]
    if gn_groups:
        proj.append(nn.GroupNorm(gn_groups, dim))
    return nn.Sequential(*proj)


@META_ARCH_REGISTRY.register()
class SAMDETR(nn.Module):
    """SAM-DETR (Zhang et al., CVPR 2022): DETR with Semantic-Aligned Matching."""

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        transformer: DetectionTransformer,
        criterion: SetCriterion,
        in_features: Sequence[str] = (),
        num_classes: int,
        num_queries: int,
        input_proj_gn_groups: int,
        position_temperature: float,
        prior_prob: float,
        aux_loss: bool,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        detections_per_image: int,
        score_threshold: float,
        strict_weights: bool = True,
        channels_last: bool = True,
        inference_autocast: Autocast = Autocast(),
        amp_scope: AutocastScope = AutocastScope(),
    ) -> None:
        """
        Args:
            backbone: its last output feature feeds the transformer.
            transformer: encoder + SAM decoder (or the baseline's decoder); owns the per-layer
                box heads.
            criterion: matching and weighted losses.
            in_features: the backbone features the transformer reads, its feature levels in
                order (empty: the backbone's coarsest output alone).
            num_classes: K foreground classes.
            num_queries: N object queries, each with the learnable parameters the transformer
                names (reference boxes; the baseline's query positions).
            input_proj_gn_groups: GroupNorm groups after the input projection; 0 for none.
            position_temperature: of the feature map's sine embedding.
            prior_prob: initial foreground probability of the class heads.
            aux_loss: supervise every decoder layer, not only the last.
            pixel_mean, pixel_std: per-channel normalisation, in the input format's order.
            detections_per_image: top-k kept over queries x classes at inference.
            score_threshold: detections scoring at or below it are dropped at inference.
            strict_weights: refuse to load a state_dict that misses or adds tensors.
            channels_last: run the backbone in channels-last memory format.
            inference_autocast: float32 or mixed precision of :meth:`inference`.
            amp_scope: what runs under autocast, when it is on (``SOLVER.AMP.SCOPE``).
        """
        super().__init__()
        self.backbone_format = torch.channels_last if channels_last else torch.contiguous_format
        self.backbone = backbone.to(memory_format=self.backbone_format)
        self.inference_autocast = inference_autocast
        self.amp_scope = amp_scope
        shapes = backbone.output_shape()
        self.in_features = list(in_features) or [
            max(shapes, key=lambda name: shapes[name].stride)  # the coarsest
        ]
        missing = [name for name in self.in_features if name not in shapes]
        if missing:
            raise ValueError(
                f"MODEL.SAM_DETR.IN_FEATURES {self.in_features} names {missing}, which the "
                f"backbone does not output (it outputs {sorted(shapes)}); add them to the "
                "backbone's output features (MODEL.RESNETS.OUT_FEATURES)."
            )
        dim = transformer.dim
        projections = [
            _input_projection(shapes[name].channels, dim, input_proj_gn_groups)
            for name in self.in_features
        ]
        # One level: the projection itself (state_dict keys input_proj.0/1, as always);
        # several: one per level (input_proj.<level>.0/1, the official multi-scale keys).
        self.input_proj = projections[0] if len(projections) == 1 else nn.ModuleList(projections)
        self.position_embedding = MapPositionEmbedding(dim, position_temperature)
        self.transformer = transformer
        # Learnable per-query parameters (reference boxes; the baseline's query positions).
        self.query_parameters_name, width = transformer.query_parameters
        self.add_module(self.query_parameters_name, nn.Embedding(num_queries, width))
        bias = -math.log((1 - prior_prob) / prior_prob)
        self.class_embed = nn.ModuleList(
            nn.Linear(dim, num_classes) for _ in range(len(transformer.decoder))
        )
        for head in self.class_embed:
            nn.init.constant_(head.bias, bias)
        self.criterion = criterion
        self.num_classes = num_classes
        self.aux_loss = aux_loss
        self.detections_per_image = detections_per_image
        self.score_threshold = score_threshold
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        self.strict_weights = strict_weights
        self.register_load_state_dict_post_hook(refuse_incomplete_load)

    @classmethod
    def from_config(cls, cfg: CfgNode) -> Dict:
        validate_sam_detr_config(cfg)
        c = cfg.MODEL.SAM_DETR
        matcher = HungarianMatcher(
            cost_class=c.COST_CLASS,
            cost_bbox=c.COST_BBOX,
            cost_giou=c.COST_GIOU,
            focal_alpha=c.FOCAL_ALPHA,
            focal_gamma=c.FOCAL_GAMMA,
        )
        layer_spec = SAMLayerSpec(
            dim=c.HIDDEN_DIM,
            num_heads=c.NHEADS,
            dim_feedforward=c.DIM_FEEDFORWARD,
            dropout=c.DROPOUT,
            roi_size=c.ROI_SIZE,
            point_conv_dim=c.POINT_CONV_DIM,
            point_mlp_dims=tuple(c.POINT_MLP_DIMS),
            smca=c.SMCA,
            smca_divisor=c.SMCA_DIVISOR,
            temperature=c.POSITION_TEMPERATURE,
            roi_align=c.ROI_ALIGN,
            query_resampling=c.QUERY_RESAMPLING,
            num_salient_points=c.NUM_SALIENT_POINTS,
            search_range=c.SEARCH_RANGE,
            reweighting=c.REWEIGHTING,
            num_levels=max(len(c.IN_FEATURES), 1),
            deformable_points=c.DEFORMABLE_POINTS,
            enc_dim_feedforward=c.ENC_DIM_FEEDFORWARD,
        )
        transformer = TRANSFORMERS[c.SEMANTIC_ALIGNED_MATCHING](
            layer_spec,
            c.ENC_LAYERS,
            c.DEC_LAYERS,
            [list(c.IN_FEATURES).index(name) for name in c.DECODER_IN_FEATURES],
        )
        criterion = SetCriterion(
            num_classes=c.NUM_CLASSES,
            matcher=matcher,
            class_weight=c.CLASS_WEIGHT,
            l1_weight=c.L1_WEIGHT,
            giou_weight=c.GIOU_WEIGHT,
            focal_alpha=c.FOCAL_ALPHA,
            focal_gamma=c.FOCAL_GAMMA,
        )
        return {
            "backbone": build_sam_detr_backbone(cfg),
            "transformer": transformer,
            "criterion": criterion,
            "in_features": c.IN_FEATURES,
            "num_classes": c.NUM_CLASSES,
            "num_queries": c.NUM_QUERIES,
            "input_proj_gn_groups": c.INPUT_PROJ_GN_GROUPS if c.INPUT_PROJ_GN else 0,
            "position_temperature": c.POSITION_TEMPERATURE,
            "prior_prob": c.PRIOR_PROB,
            "aux_loss": c.AUX_LOSS,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "score_threshold": c.SCORE_THRESH_TEST,
            "strict_weights": c.STRICT_WEIGHTS,
            "channels_last": c.CHANNELS_LAST,
            "inference_autocast": build_autocast(
                cfg.TEST.AMP.ENABLED, cfg.SOLVER.AMP.DTYPE, cfg.MODEL.DEVICE
            ),
            "amp_scope": AMP_SCOPES[cfg.SOLVER.AMP.SCOPE](),
        }

    @property
    def level_projections(self) -> List[nn.Module]:
        """The input projection of each feature level, in ``in_features`` order."""
        return (
            list(self.input_proj)
            if isinstance(self.input_proj, nn.ModuleList)
            else [self.input_proj]
        )

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        """``(C, H, W)`` pixel values -> normalised by ``pixel_mean`` / ``pixel_std``."""
        return (image - self.pixel_mean) / self.pixel_std

    def preprocess_image(self, batched_inputs: List[Dict]) -> Tuple[ImageList, torch.Tensor]:
        """Normalised, zero-padded batch ``(B, C, H, W)`` and its mask ``(B, H, W)``
        (True on padding)."""
        for x in batched_inputs:
            check_image(x["image"], len(self.pixel_mean))
        images = [
            self.normalize(x["image"].to(self.device, non_blocking=True)) for x in batched_inputs
        ]
        images = ImageList.from_tensors(images)
        return images, padding_mask(images)

    def forward_outputs(
        self, pixels: torch.Tensor, mask: torch.Tensor, padded: bool = True
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Normalised, padded images ``(B, C, H, W)`` and their padding mask ``(B, H, W)`` ->
        class logits ``(L, B, N, K)`` and boxes ``(L, B, N, 4)`` (cx, cy, w, h in [0, 1] of
        each unpadded image) of all L decoder layers. ``padded=False``: no attention bias."""
        pixels = pixels.contiguous(memory_format=self.backbone_format)
        features = self.backbone(pixels)
        with self.amp_scope.region(self.device.type):
            srcs, pos, masks = [], [], []
            for name, projection in zip(self.in_features, self.level_projections):
                feature = self.amp_scope.inputs(features[name])
                level_mask = downsample_mask(mask, feature.shape[-2:])
                srcs.append(projection(feature))
                pos.append(self.position_embedding(level_mask).to(feature.dtype))
                masks.append(level_mask)
            query_parameters = getattr(self, self.query_parameters_name).weight
            hidden, boxes = self.transformer(srcs, pos, masks, query_parameters, padded)
            logits = torch.stack([head(h) for head, h in zip(self.class_embed, hidden)])
        return logits, boxes

    def forward(self, batched_inputs: List[Dict]):
        """Detectron2 interface: weighted losses in training, ``[{"instances"}]`` otherwise."""
        if not self.training:
            return self.inference(batched_inputs)
        images, mask = self.preprocess_image(batched_inputs)
        logits, boxes = self.forward_outputs(images.tensor, mask, is_padded(images))
        instances = [x["instances"] for x in batched_inputs]  # read on the host: no device wait
        targets = prepare_targets(instances, images.image_sizes, self.num_classes, self.device)
        if not self.aux_loss:
            logits, boxes = logits[-1:], boxes[-1:]
        # Matching costs and losses in float32 even under autocast (fp16 GIoU gives NaN).
        with torch.autocast(device_type=self.device.type, enabled=False):
            return self.criterion(logits, boxes, targets)

    def inference(self, batched_inputs: List[Dict], do_postprocess: bool = True):
        """Detections ``[{"instances": Instances}]`` rescaled to each input's "height" and
        "width" (default: its image size); or, with ``do_postprocess=False``, the raw dict
        ``pred_logits (B, N, K)``, ``pred_boxes (B, N, 4)``, ``aux_outputs`` (earlier
        layers, same keys)."""
        images, mask = self.preprocess_image(batched_inputs)
        with self.inference_autocast.autocast():
            logits, boxes = self.forward_outputs(images.tensor, mask, is_padded(images))
        logits, boxes = logits.float(), boxes.float()
        if not do_postprocess:
            return {
                "pred_logits": logits[-1],
                "pred_boxes": boxes[-1],
                "aux_outputs": [
                    {"pred_logits": lg, "pred_boxes": bx} for lg, bx in zip(logits[:-1], boxes[:-1])
                ],
            }
        results = detections(
            logits[-1],
            boxes[-1],
            images.image_sizes,
            self.detections_per_image,
            self.score_threshold,
        )
        processed = []
        for result, inputs, size in zip(results, batched_inputs, images.image_sizes):
            height, width = inputs.get("height", size[0]), inputs.get("width", size[1])
            processed.append({"instances": detector_postprocess(result, height, width)})
        return processed
