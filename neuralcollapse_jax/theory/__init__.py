r"""The theory of Min, Zhu and Vidal (NeurIPS 2025) and Min, Mallada and Vidal (ICLR 2024).

Class-wise max margins, the predicted limit of Theorem 1 (NeurIPS 2025) and distances to
it, checks of the assumptions on a data set and an initialization, and the time scales
of the dynamics.

**Public API** (names are stable):

- Max margin through the origin: `MaxMargin`, `max_margin`, `class_max_margins`.
- Theorem 1: `Theorem1Limit`, `margin_scales`, `predicted_limit`, `predicted_margin`,
  `limit_distance`, `LimitRecorder` (records `limit_distance` along a run).
- Assumptions: `Check`, `check_assumption1`, `check_balanced`,
  `check_nondegenerate`, `check_semi_local`, `check_data_condition`,
  `check_lemma2_eps`, `check_assumptions`, `format_checks`.
- Time scales: `effective_eps`, `alignment_horizon`, `lemma2_eps_bound`, `iclr_mu`,
  `iclr_t1`, `separation_time`, `trajectory_separation_time`.

**Theorem 1 (NeurIPS 2025), in brief.** For orthogonally separable data and a small,
balanced initialization satisfying the case's assumptions, `theta(t)/||theta(t)||_F`
converges to `theta_bar` with, for each class `k`, a block `W_k = s_k u_k g_k^T`,
`V_k = s_k e~_k g_k^T` (binary: `V_+- = +-s_+- g_+-^T`) on the neurons of the group
`N_k`, where `g_k >= 0` is a unit vector, `u_k` the class's max-margin direction through
the origin, `gamma_k` its margin, and
`s_k = sqrt(gamma_k^{-1} / (2 sum_l gamma_l^{-1}))`. Hence
`phi_bar(x_i) = s_k <u_k, x_i> g_k` for `i in I_k` (directional collapse), orthogonal
class features, and `V = E~ diag(s) Phi` (projected self-duality).
"""

from ._assumptions import Check as Check
from ._assumptions import check_assumption1 as check_assumption1
from ._assumptions import check_assumptions as check_assumptions
from ._assumptions import check_balanced as check_balanced
from ._assumptions import check_data_condition as check_data_condition
from ._assumptions import check_lemma2_eps as check_lemma2_eps
from ._assumptions import check_nondegenerate as check_nondegenerate
from ._assumptions import check_semi_local as check_semi_local
from ._assumptions import format_checks as format_checks
from ._limit import LimitRecorder as LimitRecorder
from ._limit import Theorem1Limit as Theorem1Limit
from ._limit import limit_distance as limit_distance
from ._limit import margin_scales as margin_scales
from ._limit import predicted_limit as predicted_limit
from ._limit import predicted_margin as predicted_margin
from ._max_margin import MaxMargin as MaxMargin
from ._max_margin import class_max_margins as class_max_margins
from ._max_margin import max_margin as max_margin
from ._time_scales import alignment_horizon as alignment_horizon
from ._time_scales import effective_eps as effective_eps
from ._time_scales import iclr_mu as iclr_mu
from ._time_scales import iclr_t1 as iclr_t1
from ._time_scales import lemma2_eps_bound as lemma2_eps_bound
from ._time_scales import separation_time as separation_time
from ._time_scales import trajectory_separation_time as trajectory_separation_time


__all__ = [
    "Check",
    "LimitRecorder",
    "MaxMargin",
    "Theorem1Limit",
    "alignment_horizon",
    "check_assumption1",
    "check_assumptions",
    "check_balanced",
    "check_data_condition",
    "check_lemma2_eps",
    "check_nondegenerate",
    "check_semi_local",
    "class_max_margins",
    "effective_eps",
    "format_checks",
    "iclr_mu",
    "iclr_t1",
    "lemma2_eps_bound",
    "limit_distance",
    "margin_scales",
    "max_margin",
    "predicted_limit",
    "predicted_margin",
    "separation_time",
    "trajectory_separation_time",
]
