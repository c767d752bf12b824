"""The restoration prompt `c_r`: grammar, parser and canonical form (SPIRE.md, "Restoration prompt grammar").

Canonical form, which `format_restoration_prompt` writes::

    prompt := "Remove all degradation" | clause ("; " clause)*
    clause := "Deblur with sigma " F1        blur std in output pixels      0.1 .. 8.0
            | "Upsample to " F1 "x"          total upscale factor           1.0 .. 8.0, shown "4x" when whole
            | "Denoise with sigma " F2       noise std on the [0, 1] scale  0.00 .. 0.50
            | "Dejpeg with quality " INT     JPEG quality                   1 .. 100

Clauses appear in the order above (the order the degradations were applied), each verb at most once; blind
mode ("Remove all degradation") stands alone.

Accepted input is more tolerant: any case, any whitespace between tokens, ";" or "," between clauses, clauses
in any order, one trailing ".". The tokenizer sees::

    WORD   := [A-Za-z]+            NUMBER := [+-]? (DIGITS ("." DIGITS)? | "." DIGITS)
    SEP    := ";" | ","            PERIOD := "."

A number with more digits than its clause's precision p is rounded half up on its decimal text,
q(v) = floor(v * 10^p + 1/2) / 10^p, so "0.125" gives 0.13 (rounding the binary float would give 0.12). The
range check applies to q(v); out-of-range numbers are errors, never clamps. Every error is a `PromptError`
naming the 0-based character position and the words expected there.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

__all__ = [
    "BLIND_PROMPT",
    "CLAUSES",
    "ClauseSpec",
    "PromptError",
    "RestorationPrompt",
    "canonicalize",
    "format_restoration_prompt",
    "parse_restoration_prompt",
]

BLIND_PROMPT = "Remove all degradation"
_BLIND_WORDS = ("remove", "all", "degradation")


class PromptError(ValueError):
    """A restoration prompt that does not follow the grammar.

    `position` is the 0-based character offset of the offending token; `expected` lists the alternatives that
    would have been accepted there, rendered as in the message (literal words in single quotes).
    """

    def __init__(
        self, position: int, expected: tuple[str, ...], detail: str | None = None, after: str | None = None
    ) -> None:
        self.position = position
        self.expected = expected
        if detail is None:
            detail = f"expected {_alternatives(expected)}"
            if after:
                detail += f" after '{after}'"
        super().__init__(f"restoration prompt: at position {position}: {detail}")


def _alternatives(expected: tuple[str, ...]) -> str:
    if len(expected) <= 2:
        return " or ".join(expected)
    return "one of " + ", ".join(expected)


@dataclass(frozen=True)
class ClauseSpec:
    """One clause of the grammar: its words, its number's precision and range, the field it fills."""

    field: str  # RestorationPrompt field
    verb: str  # canonical spelling of the first word
    words: tuple[str, ...]  # lower-case words between the verb and the number
    suffix: str  # lower-case word right after the number ("x"), or ""
    places: int  # decimals kept
    lo: Decimal
    hi: Decimal
    label: str  # how range errors name the number
    whole_as_int: bool = False  # "Upsample to 4x", not "4.0x"

    @property
    def range_text(self) -> str:
        return f"{self.lo}..{self.hi}"

    def quantize(self, value: float | Decimal) -> Decimal | None:
        """`value` rounded half up to this clause's precision; None when not finite or out of range."""
        raw = value if isinstance(value, Decimal) else Decimal(repr(float(value)))
        if (
            not raw.is_finite() or raw < 0
        ):  # every range starts at or above zero; "-0.001" must not round into it
            return None
        try:
            q = raw.quantize(Decimal(1).scaleb(-self.places), rounding=ROUND_HALF_UP)
        except InvalidOperation:  # more digits than the decimal context holds: far out of range anyway
            return None
        q = q.copy_abs() if q.is_zero() else q  # "-0.00" must not reach the canonical form
        return q if self.lo <= q <= self.hi else None

    def to_field(self, q: Decimal) -> float | int:
        return int(q) if self.places == 0 else float(q)

    def number_text(self, value: float) -> str:
        q = Decimal(repr(value)).quantize(Decimal(1).scaleb(-self.places), rounding=ROUND_HALF_UP)
        if self.whole_as_int and q == q.to_integral_value():
            q = q.quantize(Decimal(1))
        return str(q)

    def text(self, value: float) -> str:
        """The canonical clause, e.g. "Deblur with sigma 1.5"."""
        return f"{self.verb} {' '.join(self.words)} {self.number_text(value)}{self.suffix}"


# In canonical order: the order the degradation pipeline applies the operations (SPIRE.md).
CLAUSES: tuple[ClauseSpec, ...] = (
    ClauseSpec("deblur", "Deblur", ("with", "sigma"), "", 1, Decimal("0.1"), Decimal("8.0"), "deblur sigma"),
    ClauseSpec(
        "upsample", "Upsample", ("to",), "x", 1, Decimal("1.0"), Decimal("8.0"), "upsample factor", True
    ),
    ClauseSpec(
        "denoise", "Denoise", ("with", "sigma"), "", 2, Decimal("0.00"), Decimal("0.50"), "denoise sigma"
    ),
    ClauseSpec("dejpeg", "Dejpeg", ("with", "quality"), "", 0, Decimal(1), Decimal(100), "dejpeg quality"),
)
_BY_VERB = {spec.verb.lower(): spec for spec in CLAUSES}


@dataclass(frozen=True)
class RestorationPrompt:
    """A parsed restoration prompt; None means the clause is absent, all None is blind mode.

    Construction rounds each value to the grammar's precision (half up on its decimal text) and raises
    ValueError when the rounded value is outside the grammar's range (SPIRE.md: errors, not clamps).
    """

    deblur: float | None = None  # blur sigma in output pixels, 0.1..8.0, one decimal
    upsample: float | None = None  # total upscale factor, 1.0..8.0, one decimal
    denoise: float | None = None  # noise std on the [0, 1] scale, 0.00..0.50, two decimals
    dejpeg: int | None = None  # JPEG quality, 1..100

    def __post_init__(self) -> None:
        for spec in CLAUSES:
            value = getattr(self, spec.field)
            if value is not None:
                object.__setattr__(self, spec.field, _coerce(spec, value))

    @property
    def blind(self) -> bool:
        return all(getattr(self, spec.field) is None for spec in CLAUSES)

    @property
    def scale(self) -> float:
        return 1.0 if self.upsample is None else self.upsample

    def __str__(self) -> str:
        return format_restoration_prompt(self)


def _coerce(spec: ClauseSpec, value: object) -> float | int:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"RestorationPrompt.{spec.field} must be a number, got {value!r}")
    try:
        q = spec.quantize(float(value))
    except OverflowError:  # an int too large for a float is out of range too
        q = None
    if q is None:
        raise ValueError(
            f"RestorationPrompt.{spec.field}={value!r}: {spec.label} is outside {spec.range_text}"
        )
    return spec.to_field(q)


def format_restoration_prompt(prompt: RestorationPrompt) -> str:
    """The canonical string: clauses in the order Deblur, Upsample, Denoise, Dejpeg joined by "; "."""
    clauses = [
        spec.text(getattr(prompt, spec.field)) for spec in CLAUSES if getattr(prompt, spec.field) is not None
    ]
    return "; ".join(clauses) if clauses else BLIND_PROMPT


def parse_restoration_prompt(text: str) -> RestorationPrompt:
    """Parse a tolerantly written restoration prompt; PromptError names the position and expected words."""
    if not isinstance(text, str):
        raise TypeError(f"restoration prompt must be a str, got {type(text).__name__}")
    return _Parser(text).parse()


def canonicalize(text: str) -> str:
    """format(parse(text)): the one spelling of a prompt that the text encoder sees."""
    return format_restoration_prompt(parse_restoration_prompt(text))


# --- tokenizer ----------------------------------------------------------------------------------------------

_DIGITS = frozenset("0123456789")


@dataclass(frozen=True)
class _Token:
    kind: str  # "word", "number", "sep", "period", "other" or "end"
    text: str
    pos: int

    @property
    def end(self) -> int:
        return self.pos + len(self.text)


def _tokenize(text: str) -> list[_Token]:
    tokens = []
    i = 0
    while i < len(text):
        if text[i].isspace():
            i += 1
            continue
        start = i
        kind, i = _scan(text, i)
        tokens.append(_Token(kind, text[start:i], start))
    tokens.append(_Token("end", "", len(text)))
    return tokens


def _scan(text: str, i: int) -> tuple[str, int]:
    """The kind of the token starting at `i` and the index just past it."""
    c = text[i]
    if _is_letter(c):
        while i < len(text) and _is_letter(text[i]):
            i += 1
        return "word", i
    number_end = _number_end(text, i)
    if number_end > i:
        return "number", number_end
    if c in ";,":
        return "sep", i + 1
    if c == ".":
        return "period", i + 1
    return "other", i + 1


def _is_letter(c: str) -> bool:
    return c.isascii() and c.isalpha()


def _number_end(text: str, i: int) -> int:
    """Index just past a NUMBER starting at `i`, or `i` when there is none."""
    j = i + (text[i] in "+-")
    k = _skip_digits(text, j)
    # A "." counts only when a digit follows, so "2." is the number 2 and a trailing period.
    if k + 1 < len(text) and text[k] == "." and text[k + 1] in _DIGITS:
        k = _skip_digits(text, k + 1)
    return k if k > j else i


def _skip_digits(text: str, i: int) -> int:
    while i < len(text) and text[i] in _DIGITS:
        i += 1
    return i


# --- recursive-descent parser -------------------------------------------------------------------------------


class _Parser:
    """prompt := blind | clause (SEP clause)*, then an optional PERIOD and the end of the text."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.i = 0

    def parse(self) -> RestorationPrompt:
        start = self._peek().pos
        if self._peek_word() == "remove":
            self._words(_BLIND_WORDS, start)
            self._finish(start, blind=True)
            return RestorationPrompt()
        values: dict[str, float | int] = {}
        after = None
        while True:
            start = self._peek().pos
            spec = self._verb(values, after)
            values[spec.field] = self._clause_rest(spec, start)
            if self._peek().kind != "sep":
                break
            after = self._advance().text
        self._finish(start)
        return RestorationPrompt(**values)

    def _verb(self, values: dict[str, float | int], after: str | None) -> ClauseSpec:
        tok = self._peek()
        left = [spec for spec in CLAUSES if spec.field not in values]
        expected = tuple(f"'{spec.verb}'" for spec in left) or ("end of prompt",)
        if not values:
            expected += (f"'{BLIND_PROMPT}'",)
        word = self._peek_word()
        if word == "remove" and values:
            raise PromptError(tok.pos, expected, f"'{BLIND_PROMPT}' cannot be combined with other clauses")
        spec = _BY_VERB.get(word or "")
        if spec is None:
            raise PromptError(tok.pos, expected, after=after)
        if spec.field in values:
            raise PromptError(tok.pos, expected, f"'{spec.verb}' appears twice")
        self._advance()
        return spec

    def _clause_rest(self, spec: ClauseSpec, start: int) -> float | int:
        """Everything after the verb: the fixed words, the number, the suffix."""
        self._words(spec.words, start)
        tok = self._peek()
        if tok.kind != "number":
            raise PromptError(tok.pos, ("a number",), after=self._consumed(start))
        self._advance()
        q = spec.quantize(Decimal(tok.text))
        if q is None:
            raise PromptError(
                tok.pos,
                (f"a number in {spec.range_text}",),
                f"{spec.label} {tok.text} is outside {spec.range_text}",
            )
        if spec.suffix:
            self._words((spec.suffix,), start)
        return spec.to_field(q)

    def _words(self, words: tuple[str, ...], start: int) -> None:
        """Consume `words`; on a mismatch, expect the rest of the phrase from there."""
        for k in range(len(words)):
            if self._peek_word() != words[k]:
                phrase = " ".join(words[k:])
                raise PromptError(self._peek().pos, (f"'{phrase}'",), after=self._consumed(start))
            self._advance()

    def _finish(self, start: int, blind: bool = False) -> None:
        """An optional trailing period, then the end of the text."""
        tok = self._peek()
        if blind and tok.kind == "sep":
            raise PromptError(tok.pos, ("end of prompt",), f"'{BLIND_PROMPT}' stands alone")
        if tok.kind == "period":
            self._advance()
            if self._peek().kind != "end":
                raise PromptError(self._peek().pos, ("end of prompt",), after=".")
            return
        if tok.kind != "end":
            expected = ("'.'", "end of prompt") if blind else ("';'", "','", "'.'", "end of prompt")
            raise PromptError(tok.pos, expected, after=self._consumed(start))

    def _peek(self) -> _Token:
        return self.tokens[self.i]

    def _peek_word(self) -> str | None:
        tok = self._peek()
        return tok.text.lower() if tok.kind == "word" else None

    def _advance(self) -> _Token:
        tok = self.tokens[self.i]
        self.i = min(self.i + 1, len(self.tokens) - 1)  # stay on "end"
        return tok

    def _consumed(self, start: int) -> str:
        """The source text of the current clause so far, for "after '...'" in messages."""
        return self.text[start : self.tokens[self.i - 1].end] if self.i else ""
