"""neuralcollapse_jax: exact gradient-flow dynamics of shallow ReLU networks."""

from . import datasets as datasets
from . import deep as deep
from . import metrics as metrics
from . import theory as theory
from ._adjoint import ForwardOrReverse as ForwardOrReverse
from ._config import DataConfig as DataConfig
from ._config import FlowConfig as FlowConfig
from ._config import ModelConfig as ModelConfig
from ._config import RunConfig as RunConfig
from ._crossing import CrossingController as CrossingController
from ._crossing import EventController as EventController
from ._dataset import Dataset as Dataset
from ._descent import gradient_descent as gradient_descent
from ._field import GradientField as GradientField
from ._field import gradient as gradient
from ._field import vector_field as vector_field
from ._flow import DEFAULT_MAX_STEPS as DEFAULT_MAX_STEPS
from ._flow import DEFAULT_RTOL as DEFAULT_RTOL
from ._flow import DEFAULT_RTOL_FLOAT32 as DEFAULT_RTOL_FLOAT32
from ._flow import default_atol as default_atol
from ._flow import default_rtol as default_rtol
from ._flow import gradient_flow as gradient_flow
from ._loss import LOSS_NAMES as LOSS_NAMES
from ._loss import AbstractLoss as AbstractLoss
from ._loss import CrossEntropy as CrossEntropy
from ._loss import Exponential as Exponential
from ._loss import Logistic as Logistic
from ._loss import Square as Square
from ._loss import as_loss as as_loss
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
from ._reproduce import reproduce_config as reproduce_config
from ._rk import UnrolledERK as UnrolledERK
from ._row_space import RowSpace as RowSpace
from ._row_space import row_space_basis as row_space_basis
from ._run_report import plot_trajectory as plot_trajectory
from ._sliding import SlidingReLU as SlidingReLU
from ._sliding_modes import default_slots as default_slots
from ._solvers import SOLVER_NAMES as SOLVER_NAMES
from ._solvers import auto_solver as auto_solver
from ._solvers import classes_orthogonal as classes_orthogonal
from ._solvers import resolve_solver as resolve_solver
from ._solvers import sliding_tableau as sliding_tableau
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
from ._times import log_steps as log_steps
from ._times import log_times as log_times
from ._trajectory import Status as Status
from ._trajectory import Trajectory as Trajectory
from ._trajectory_io import load_run as load_run
from ._trajectory_io import load_trajectory as load_trajectory
from ._trajectory_io import save_trajectory as save_trajectory


__version__ = "0.1.0"
