"""One style for every scenario figure: matplotlib rc settings, distinct series styles, mathtext helpers,
log-axis ticks that never collide, and `figure_problems`, the check a figure passes before it is committed.

Text in figures is matplotlib mathtext: a symbol with a sub- or superscript is written between `$…$`
(`r"$\\ell_{2/D}$"`, `tex_power("e", -4.24)` → `$e^{-4.24}$`), never as raw `ℓ_{2/D}` or `10^-3`, which
matplotlib prints literally."""

from __future__ import annotations

import contextlib
import itertools
import math
import re
from collections.abc import Iterator

# matplotlib's tab10, so that `series_styles()[k]["color"]` is the "Ck" the scenarios also name.
COLORS = ("C0", "C1", "C2", "C3", "C4", "C5", "C6", "C7", "C8", "C9")
LINESTYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "v", "D", "x", "+", "*", "P", "<")

STYLE = {
    "figure.figsize": (7.0, 3.0),
    "figure.dpi": 100,
    "figure.constrained_layout.use": True,
    "savefig.dpi": 160,
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.labelsize": 9,
    "figure.titlesize": 10,
    "legend.fontsize": 8,
    # Long enough to show a dashed or dotted line as such (the default 2 em shows one dash).
    "legend.handlelength": 3.2,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "lines.linewidth": 1.5,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.formatter.use_mathtext": True,
    "mathtext.fontset": "dejavusans",
}


@contextlib.contextmanager
def style():
    """Matplotlib rc settings shared by all scenario figures, applied only inside the `with` block (the
    runner wraps `plot` in it; matplotlib's global settings are never changed)."""
    import matplotlib as mpl

    with mpl.rc_context(STYLE):
        yield


def series_styles(n: int | None = None, *, markers: bool = False) -> Iterator[dict] | list[dict]:
    """Line styles for many series that no two share: the ten colours with a solid line, then the ten with
    dashes, dots, dash-dots (`markers=True` adds a marker cycle, offset from the colours).

    `series_styles(15)` is a list of 15 `dict(color=..., ls=...)` for `ax.plot(..., **style)`;
    `series_styles()` is the endless iterator."""
    def gen():
        for k in itertools.count():
            style = {"color": COLORS[k % len(COLORS)], "ls": LINESTYLES[(k // len(COLORS)) % len(LINESTYLES)]}
            if markers:
                style["marker"] = MARKERS[(k + k // len(COLORS)) % len(MARKERS)]
            yield style

    return gen() if n is None else list(itertools.islice(gen(), n))


def _number(x, digits: int) -> str:
    if isinstance(x, str):
        return x
    x = float(x)
    if x == round(x) and abs(x) < 1e15:
        return str(int(round(x)))
    return f"{x:.{digits}f}"


def tex_power(base, exponent, digits: int = 2) -> str:
    """`$base^{exponent}$` in mathtext: `tex_power("e", -4.2351)` → `$e^{-4.24}$`, `tex_power(10, -3)` →
    `$10^{-3}$`; an integer-valued exponent is written without decimals, others with `digits` decimals
    (a string exponent is used as it is)."""
    return f"${base}^{{{_number(exponent, digits)}}}$"


def tex_number(x: float, digits: int = 2) -> str:
    """A number for a label, in mathtext: `0.05` → `$0.05$`, `3e4` → `$3\\times10^{4}$`, `1e-3` →
    `$10^{-3}$` (`digits` significant digits; plain notation from 1e-3 to 1e4)."""
    x = float(x)
    if x == 0 or not math.isfinite(x) or 1e-3 <= abs(x) < 1e4:
        return f"${x:.{digits}g}$"
    exponent = math.floor(math.log10(abs(x)))
    mantissa = float(f"{x / 10**exponent:.{digits}g}")
    if abs(mantissa) >= 10:  # rounding carried into the next decade
        mantissa, exponent = mantissa / 10, exponent + 1
    lead = "" if mantissa == 1 else "-" if mantissa == -1 else f"{mantissa:g}\\times"
    return f"${lead}10^{{{exponent}}}$"


def log_ticks(ax, axis: str = "both") -> None:
    """Tick labels of a log axis that do not run into each other: decades only when the axis spans two or
    more, otherwise also 2 and 5 times each decade (matplotlib's default labels every minor tick of a short
    log axis, and on a shared axis writes `3×10⁴×10⁻¹`-like strings); every integer multiple when it spans
    less than 0.6 decades. Call after the data are drawn."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    def formatter(labelled):
        def label(value, _pos):
            if value <= 0:
                return ""
            exponent = math.floor(math.log10(value) + 1e-9)
            mantissa = round(value / 10**exponent, 6)
            if mantissa not in labelled:
                return ""
            if -2 <= exponent <= 3:  # 0.05, 2, 500: plain numbers read faster than powers of ten
                return f"${value:.{max(0, -exponent)}f}$"
            return f"$10^{{{exponent}}}$" if mantissa == 1 else f"${mantissa:g}\\times10^{{{exponent}}}$"

        return FuncFormatter(label)

    for name in ("x", "y") if axis == "both" else (axis,):
        a = getattr(ax, f"{name}axis")
        if a.get_scale() != "log":
            continue
        lo, hi = sorted(getattr(ax, f"get_{name}lim")())
        if lo <= 0:
            continue
        span = math.log10(hi / lo)
        if span >= 2:
            a.set_major_locator(LogLocator(base=10, numticks=12))
            a.set_minor_formatter(NullFormatter())
            continue
        subs = (1.0, 2.0, 5.0) if span >= 0.6 else tuple(float(k) for k in range(1, 10))
        a.set_major_locator(LogLocator(base=10, subs=subs, numticks=12))
        a.set_major_formatter(formatter(set(subs)))
        a.set_minor_formatter(NullFormatter())


_MATH = re.compile(r"(?<!\\)\$.*?(?<!\\)\$")


def unrendered_tex(text: str) -> list[str]:
    """The pieces of `text` that matplotlib would print literally although they were meant as maths: a `^` or
    `_` outside `$…$` (`ℓ_{2/D}`, `10^-3`, `‖W‖_F`, and code identifiers such as `stiff_quadratic`)."""
    outside = _MATH.sub(" ", text)
    return [m.group(0) for m in re.finditer(r"\S*[\^_]\S*", outside)]


def _handle_look(handle) -> tuple:
    from matplotlib.colors import to_rgba
    from matplotlib.lines import Line2D

    if isinstance(handle, Line2D):
        marker = handle.get_marker()
        return ("line", to_rgba(handle.get_color()), str(handle.get_linestyle()) if handle.get_linestyle() else "",
                "" if marker in (None, "None", "", " ") else str(marker))
    try:
        face = to_rgba(handle.get_facecolor()) if handle.get_fill() else None
        return ("patch", face, to_rgba(handle.get_edgecolor()), handle.get_hatch())
    except (AttributeError, ValueError, TypeError):
        return ("other", id(handle))


def figure_problems(fig) -> list[str]:
    """What a newcomer would find wrong in `fig`, as sentences (empty when nothing): a legend with two
    entries of the same label or the same look (colour, line style and marker), or with handles too short to
    show dashes, and any text — titles, axis
    labels, tick labels, legend entries, annotations — with a `^` or `_` outside mathtext."""
    from matplotlib.text import Text

    fig.canvas.draw()  # tick labels exist only once drawn
    problems = []
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    for legend in legends:
        labels = [t.get_text() for t in legend.get_texts()]
        for label in sorted({x for x in labels if labels.count(x) > 1}):
            problems.append(f"legend has the label {label!r} {labels.count(label)} times")
        looks = [_handle_look(h) for h in legend.legend_handles]
        if legend.handlelength < 2.5 and any(look[0] == "line" and look[2] not in ("-", "None", "") for look in looks):
            problems.append(f"legend handles of {legend.handlelength:g} em are too short to show a dashed or dotted "
                            "line as such (use ≥ 2.5)")
        for i, j in itertools.combinations(range(len(looks)), 2):
            if looks[i] == looks[j] and looks[i][0] != "other":
                problems.append(f"legend entries {labels[i]!r} and {labels[j]!r} look the same")
    seen = set()
    for text in fig.findobj(Text):
        s = text.get_text()
        if not s or not text.get_visible() or id(text) in seen:
            continue
        seen.add(id(text))
        bad = unrendered_tex(s)
        if bad:
            problems.append(f"text {s!r} has {', '.join(bad)} outside $…$ (matplotlib prints it literally)")
    return problems
