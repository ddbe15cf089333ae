"""flowsim: neural-network training as the exact gradient-flow ODE θ' = −∇L(θ).

Public names are re-exported here explicitly (`from ._x import Foo as Foo`), the
Diffrax/Equinox habit, so this file is the readable list of the public API.
"""

import jax as _jax

from ._config import enable_compilation_cache as _enable_compilation_cache

# Process-wide JAX settings flowsim makes on import (documented in the README, "Set-up"):
# float64, since tolerances below 1e-7 and horizons like t = e^(10^6) are meaningless in float32;
# and a persistent compilation cache (FLOWSIM_JAX_CACHE=off disables it, or set your own directory).
_jax.config.update("jax_enable_x64", True)
_enable_compilation_cache()

from . import _data as data
from . import analysis as analysis
from . import harness as harness
from . import networks as networks
from ._cache import cache as cache
from ._cache import gradient_descent as gradient_descent
from ._cache import simulate as simulate
from ._cache import simulate_batch as simulate_batch
from ._config import enable_compilation_cache as enable_compilation_cache
from ._flow import ModifiedFlow as ModifiedFlow
from ._flow import modified_flow as modified_flow
from ._kinks import Kinked as Kinked
from ._kinks import NonsmoothWarning as NonsmoothWarning
from ._kinks import find_kinks as find_kinks
from ._losses import AbstractLoss as AbstractLoss
from ._losses import Exponential as Exponential
from ._losses import Logistic as Logistic
from ._losses import SoftmaxCrossEntropy as SoftmaxCrossEntropy
from ._losses import Squared as Squared
from ._nonsmooth import AbstractNonsmoothModel as AbstractNonsmoothModel
from ._policy import AutoSolver as AutoSolver
from ._policy import FixedSolver as FixedSolver
from ._problem import Problem as Problem
from ._smoothing import SmoothedLimit as SmoothedLimit
from ._smoothing import simulate_or_smoothed as simulate_or_smoothed
from ._smoothing import smoothed_fallback as smoothed_fallback
from ._smoothing import smoothed_limit as smoothed_limit
from ._trajectory import Status as Status
from ._trajectory import Trajectory as Trajectory
from .harness import Claim as Claim
from .harness import Scenario as Scenario
from .harness import show_progress as show_progress
from .harness import sweep as sweep

__version__ = "0.1.0"
