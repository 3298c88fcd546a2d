"""Networks loaded to answer, not to train: the same answers for less work on a CPU.

- Every batch normalisation folds into the convolution that feeds it (in eval mode it is an
  affine map per channel, which the convolution's weights and bias can carry): one pass over
  the feature map fewer per convolution.
- Weights are laid out channels-last, the order oneDNN's CPU convolutions run fastest; each
  convolution's output follows its weights, so the feature maps follow too.

Only where the order of the layers is known: consecutive children of an `nn.Sequential` (or of
torchvision's `IntermediateLayerGetter`, a backbone's stages run in order), and torchvision's
ResNets and their blocks, whose forward applies `bnN` to `convN`'s output (smp's ResNet
encoders are these). Anything else is left as it is. A trainer's model is never passed here:
predictors built for validation share the model being trained.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

IN_ORDER = (nn.Sequential, IntermediateLayerGetter)
NAMED_PAIRS = (ResNet, BasicBlock, Bottleneck)  # convN feeds bnN


def for_inference(model: nn.Module) -> nn.Module:
    """`model`, in eval mode, with its batch norms folded and its weights channels-last (in
    place; returned for chaining)."""
    model.eval()
    fold_batch_norms(model)
    return model.to(memory_format=torch.channels_last)


def fold_batch_norms(module: nn.Module) -> int:
    """Fold each BatchNorm2d into the Conv2d before it, in place, where the order is known (see
    the module's doc); how many were folded. Eval mode only: the running statistics are used."""
    folded = sum(fold_batch_norms(child) for child in module.children())
    if isinstance(module, IN_ORDER):
        names = list(module._modules)
        pairs = list(zip(names, names[1:], strict=False))
    elif isinstance(module, NAMED_PAIRS):
        pairs = [(f"conv{name[2:]}", name) for name in module._modules if name.startswith("bn")]
    else:
        return folded
    for conv_name, norm_name in pairs:
        conv, norm = module._modules.get(conv_name), module._modules.get(norm_name)
        # exactly BatchNorm2d: timm's BatchNormAct2d, a subclass, also activates
        if (
            type(norm) is nn.BatchNorm2d
            and isinstance(conv, nn.Conv2d)
            and not (conv.training or norm.training)
        ):
            module._modules[conv_name] = fuse_conv_bn_eval(conv, norm)
            module._modules[norm_name] = nn.Identity()
            folded += 1
    return folded
