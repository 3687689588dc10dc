"""Which fonts figures draw text in, and class names those fonts cannot draw.

Matplotlib draws a character its font lacks as an empty box ("tofu"): a class named ``猫`` would be a row of
boxes in the confusion matrix. Matplotlib's own DejaVu Sans covers Latin, Greek and Cyrillic, not CJK. So every
figure's text is drawn in :func:`text_fonts`: matplotlib's default sans-serif font, then (matplotlib >= 3.6 falls
back character by character along the list) any installed font of :data:`FALLBACK_FAMILIES`, e.g. Debian's
``fonts-noto-cjk``. A class name that none of them can draw is shown as ``class <index>`` in figures
(:func:`figure_names`); texts (Markdown, JSON, TensorBoard's projector labels) keep the real name, and the
report says which names its figures replaced (:func:`undrawable_names`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from matplotlib import font_manager
from matplotlib.figure import Figure
from matplotlib.ft2font import FT2Font
from matplotlib.text import Text

FALLBACK_FAMILIES = (
    "Noto Sans CJK JP",
    "Noto Sans CJK SC",
    "Noto Sans CJK TC",
    "Noto Sans CJK KR",
    "Source Han Sans",
    "WenQuanYi Zen Hei",
    "WenQuanYi Micro Hei",
    "Droid Sans Fallback",
    "Noto Sans",
    "Noto Sans Arabic",
    "Noto Sans Hebrew",
    "Noto Sans Devanagari",
    "Noto Sans Thai",
)
"""Fonts used for characters the default font lacks, when installed (none is required)."""

FONT_INSTALL_HINT = "install a font with these characters, e.g. Debian's fonts-noto-cjk for Chinese and Japanese"


@functools.cache
def text_fonts() -> tuple[str, ...]:
    """Family names text is drawn in, in fallback order: the default sans-serif font (DejaVu Sans, shipped with
    matplotlib), then every installed font of :data:`FALLBACK_FAMILIES`. Looked up once per process."""
    default = font_manager.get_font(font_manager.findfont(font_manager.FontProperties(family=["sans-serif"])))
    installed = {entry.name for entry in font_manager.fontManager.ttflist}
    extra = [name for name in FALLBACK_FAMILIES if name in installed and name != default.family_name]
    return (default.family_name, *extra)


def missing_glyphs(text: str) -> str:
    """The characters of ``text`` (each once, in order) that none of :func:`text_fonts` can draw; white space
    is never missing."""
    fonts = _font_files()
    missing = dict.fromkeys(
        char for char in text if not char.isspace() and all(font.get_char_index(ord(char)) == 0 for font in fonts)
    )
    return "".join(missing)


def figure_names(names: Sequence[str]) -> list[str]:
    """Class names as figures show them: each name, or ``class <index>`` where a character of it has no glyph
    in :func:`text_fonts` (it would be drawn as a box)."""
    return [f"class {index}" if missing_glyphs(name) else name for index, name in enumerate(names)]


def undrawable_names(names: Sequence[str]) -> dict[int, str]:
    """``{index: name}`` of the class names :func:`figure_names` replaces, for a note that says so."""
    return {index: name for index, name in enumerate(names) if missing_glyphs(name)}


def undrawable_note(names: Sequence[str]) -> str:
    """One sentence naming the classes figures show by index (and how to get their names drawn), or ``""``."""
    undrawable = undrawable_names(names)
    if not undrawable:
        return ""
    listed = ", ".join(f"class {index} = {name}" for index, name in undrawable.items())
    characters = missing_glyphs("".join(undrawable.values()))
    return (
        f"No installed font draws {characters!r}: figures show these classes by index ({listed}); {FONT_INSTALL_HINT}."
    )


def use_text_fonts(fig: Figure) -> None:
    """Draw every text of ``fig`` (titles, labels, tick labels, legends) in :func:`text_fonts`, so that a
    character the first font lacks comes from the next; call just before drawing."""
    families = list(text_fonts())
    if len(families) == 1:
        return  # nothing to fall back on: the figure stays exactly as matplotlib makes it
    for text in fig.findobj(Text):
        text.set_fontfamily(families)


@functools.cache
def _font_files() -> tuple[FT2Font, ...]:
    properties = (font_manager.FontProperties(family=[name]) for name in text_fonts())
    return tuple(font_manager.get_font(font_manager.findfont(p, fallback_to_default=False)) for p in properties)
