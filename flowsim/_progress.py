"""A progress bar for long solves that reports log t, and works under jit and vmap."""

import math

import diffrax
import equinox as eqx


class LogTimeProgressMeter(diffrax.TqdmProgressMeter):
    """Diffrax's tqdm meter (host callbacks, vmap-aware: it follows the slowest batch
    member) with the bar labelled in log t rather than per cent of the solver's time."""

    log_time: bool = eqx.field(default=False, static=True)
    time0: float = eqx.field(default=0.0, static=True)
    time1: float = eqx.field(default=1.0, static=True)

    def _log_t(self, progress: float) -> float:
        time = self.time0 + progress * (self.time1 - self.time0)
        if time <= 0:
            return -math.inf
        if self.log_time:  # s = log(1 + t) → log t = s + log(1 − e^{−s})
            return time + math.log(-math.expm1(-time))
        return math.log(time)

    def _init_bar(self):
        import tqdm

        return tqdm.tqdm(
            total=100,
            unit="%",
            desc=f"log t = -inf / {self._log_t(1.0):.4g}",
            bar_format="{desc} {percentage:5.1f}%|{bar}| [{elapsed}<{remaining}]",
        )

    def _step_bar(self, bar, progress):
        progress = float(progress)
        bar.n = round(100 * progress, 2)
        bar.set_description(f"log t = {self._log_t(progress):.4g} / {self._log_t(1.0):.4g}", refresh=False)
        bar.update(n=0)
        bar.refresh()
