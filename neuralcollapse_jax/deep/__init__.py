"""Deep feature extractors with the two-layer ReLU head: the normalization experiments
of Min, Zhu and Vidal (NeurIPS 2025, Figs. 4-5).

`DeepClassifier` is `V relu(W^T norm(g(x)))`: a ResNet `g` (torchvision's layout,
adapted to 28x28 and 32x32 images), a normalization (none, LayerNorm, RMSNorm) and the
toolkit's `TwoLayerReLU` head, trained by SGD (`train`) and measured every epoch
(`measure`). `frozen_features` turns a trained extractor into a plain `Dataset` for
the exact flow and the theory (`flow_head`).
"""

from ._bridge import flow_head as flow_head
from ._bridge import frozen_features as frozen_features
from ._bridge import restricted_head as restricted_head
from ._classifier import NORMS as NORMS
from ._classifier import DeepClassifier as DeepClassifier
from ._classifier import make_norm as make_norm
from ._classifier import torch_linear_head as torch_linear_head
from ._data import Images as Images
from ._data import cifar10 as cifar10
from ._data import mnist_split as mnist_split
from ._resnet import ARCHITECTURES as ARCHITECTURES
from ._resnet import BasicBlock as BasicBlock
from ._resnet import Bottleneck as Bottleneck
from ._resnet import ResNet as ResNet
from ._resnet import resnet18 as resnet18
from ._resnet import resnet50 as resnet50
from ._resnet import small_resnet as small_resnet
from ._train import MEASURES as MEASURES
from ._train import head_inputs as head_inputs
from ._train import learning_rate_at as learning_rate_at
from ._train import measure as measure
from ._train import optimizer as optimizer
from ._train import train as train
