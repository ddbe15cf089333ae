"""The scenario harness: scenario files, the `flowsim` command, the results store and figures.

It sits on top of the engine (`fs.simulate`, `fs.networks`, `fs.analysis`) and the engine never
imports it. `fs.Scenario`, `fs.Claim`, `fs.sweep` and `fs.show_progress` are re-exported at the
top level of `flowsim`; `Resume` is what `flowsim run` hands a scenario's `run(config, resume)`.
"""

from ._cli import main as main
from ._plotting import describe_solves as describe_solves
from ._plotting import failure_text as failure_text
from ._plotting import plot_members as plot_members
from ._scenario import Claim as Claim
from ._scenario import Scenario as Scenario
from ._scenario import ScenarioError as ScenarioError
from ._store import StoreError as StoreError
from ._style import figure_problems as figure_problems
from ._style import log_ticks as log_ticks
from ._style import series_styles as series_styles
from ._style import tex_number as tex_number
from ._style import tex_power as tex_power
from ._style import unrendered_tex as unrendered_tex
from ._sweep import show_progress as show_progress
from ._sweep import sweep as sweep
from ._work import Resume as Resume
