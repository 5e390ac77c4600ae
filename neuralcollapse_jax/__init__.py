"""neuralcollapse_jax: exact gradient-flow dynamics of shallow ReLU networks."""

from . import datasets as datasets
from . import metrics as metrics
from . import theory as theory
from ._crossing import CrossingController as CrossingController
from ._dataset import Dataset as Dataset
from ._descent import gradient_descent as gradient_descent
from ._descent import log_steps as log_steps
from ._flow import (
    auto_solver as auto_solver,
)
from ._flow import (
    default_atol as default_atol,
)
from ._flow import (
    gradient as gradient,
)
from ._flow import (
    gradient_flow as gradient_flow,
)
from ._flow import (
    log_times as log_times,
)
from ._flow import (
    vector_field as vector_field,
)
from ._loss import LOSS_NAMES as LOSS_NAMES
from ._loss import loss as loss
from ._loss import per_sample_loss as per_sample_loss
from ._model import (
    TwoLayerReLU as TwoLayerReLU,
)
from ._model import (
    activation as activation,
)
from ._model import (
    augment as augment,
)
from ._model import (
    pseudo_labels as pseudo_labels,
)
from ._reproduce import reproduce as reproduce
from ._rk import UnrolledERK as UnrolledERK
from ._sliding import SlidingReLU as SlidingReLU
from ._sliding import default_slots as default_slots
from ._sweep import (
    SweepConfig as SweepConfig,
)
from ._sweep import (
    load_sweep as load_sweep,
)
from ._sweep import (
    plot_sweep as plot_sweep,
)
from ._sweep import (
    sweep as sweep,
)
from ._trajectory import Status as Status
from ._trajectory import Trajectory as Trajectory
from ._trajectory_io import load_run as load_run
from ._trajectory_io import load_trajectory as load_trajectory
from ._trajectory_io import save_trajectory as save_trajectory


__version__ = "0.1.0"
