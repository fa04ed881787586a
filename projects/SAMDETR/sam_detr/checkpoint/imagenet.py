"""ImageNet backbone files (``MODEL.WEIGHTS`` of the paper configs, e.g. Detectron2's
``R-50.pkl`` converted from torchvision or Caffe2): what they hold that a detector has no place
for, the ImageNet classifier and BatchNorm's batch counters, is left out when training starts
from them."""

import logging
import re
from typing import Any, Dict, Iterable

__all__ = ["without_imagenet_extras"]

logger = logging.getLogger(__name__)

# The 1000-class classifier (torchvision's ``fc``, converted to ``stem.fc``; Caffe2's
# ``fc1000``) and BatchNorm's ``num_batches_tracked`` (which FrozenBatchNorm2d has not).
IMAGENET_EXTRAS = re.compile(r"(^|\.)(fc|fc1000)(\.|_)(weight|bias|w|b)$|num_batches_tracked$")


def without_imagenet_extras(state: Dict[str, Any], model_keys: Iterable[str]) -> Dict[str, Any]:
    """``state`` less the keys that the model has not and :data:`IMAGENET_EXTRAS` matches,
    with one log line naming how many were left out."""
    model_keys = set(model_keys)
    extras = [k for k in state if k not in model_keys and IMAGENET_EXTRAS.search(k)]
    if extras:
        logger.info(
            "Left out %d tensors of the ImageNet file that a detector has no place for "
            "(classifier, BatchNorm batch counters): %s",
            len(extras),
            ", ".join(extras[:4]) + (", ..." if len(extras) > 4 else ""),
        )
    return {k: v for k, v in state.items() if k not in extras}
