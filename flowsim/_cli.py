"""Kept so that `from flowsim._cli import main` in older tests and scripts still works; the command
lives in `flowsim.harness` (console script `flowsim = "flowsim.harness:main"`)."""

from .harness import main as main
