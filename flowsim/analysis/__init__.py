"""Analysis of trajectories: directions, margins, norms, ranks, and the convex / mirror-map references
that long-horizon gradient-flow results are checked against."""

from ._directions import coordinates as coordinates
from ._directions import log_log_grid as log_log_grid
from ._directions import unit as unit
from ._gf_vs_gd import GDFlowComparison as GDFlowComparison
from ._gf_vs_gd import fitted_order as fitted_order
from ._gf_vs_gd import gf_vs_gd as gf_vs_gd
from ._interpolation import InterpolationLimit as InterpolationLimit
from ._interpolation import interpolation_limit as interpolation_limit
from ._interpolation import mirror_map as mirror_map
from ._kkt import KKTCertificate as KKTCertificate
from ._kkt import kkt_certificate as kkt_certificate
from ._kkt import kkt_residual as kkt_residual
from ._limit import LimitDirection as LimitDirection
from ._limit import limit_direction as limit_direction
from ._margins import MaxMarginSolution as MaxMarginSolution
from ._margins import max_margin as max_margin
from ._margins import max_margin_solution as max_margin_solution
from ._margins import max_margin_value as max_margin_value
from ._margins import normalized_margin as normalized_margin
from ._ranks import stable_rank as stable_rank
from ._regression import min_norm_interpolant as min_norm_interpolant
from ._regression import rank_one_limit as rank_one_limit
from ._saddle import SaddleEscape as SaddleEscape
from ._scale_accuracy import QMinimizer as QMinimizer
from ._scale_accuracy import ReducedScaleFlow as ReducedScaleFlow
from ._scale_accuracy import log_regime_parameter as log_regime_parameter
from ._scale_accuracy import mean_log_loss as mean_log_loss
from ._scale_accuracy import q_minimizer as q_minimizer
from ._scale_accuracy import q_potential as q_potential
from ._scale_accuracy import reduced_scale_flow as reduced_scale_flow
from ._scale_accuracy import signed_diagonal_beta as signed_diagonal_beta
from ._scale_accuracy import summed_log_loss as summed_log_loss
from ._scale_accuracy import woodworth_q as woodworth_q
from ._sharpness import sharpness as sharpness
