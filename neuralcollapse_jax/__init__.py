"""neuralcollapse_jax: exact gradient-flow dynamics of shallow ReLU networks."""

from . import datasets as datasets
from . import metrics as metrics, theory as theory
from ._dataset import Dataset as Dataset
from ._descent import gradient_descent as gradient_descent, log_steps as log_steps
from ._flow import (
    default_atol as default_atol,
    gradient as gradient,
    gradient_flow as gradient_flow,
    log_times as log_times,
    vector_field as vector_field,
)
from ._loss import LOSS_NAMES as LOSS_NAMES, loss as loss, per_sample_loss as per_sample_loss
from ._model import (
    TwoLayerReLU as TwoLayerReLU,
    activation as activation,
    augment as augment,
    pseudo_labels as pseudo_labels,
)
from ._reproduce import reproduce as reproduce
from ._sweep import (
    SweepConfig as SweepConfig,
    load_sweep as load_sweep,
    plot_sweep as plot_sweep,
    sweep as sweep,
)
from ._sliding import SlidingReLU as SlidingReLU
from ._trajectory import Status as Status, Trajectory as Trajectory


__version__ = "0.1.0"
