"""The restoration prompt grammar (SPIRE.md, "Restoration prompt grammar")."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spire_rt.prompts import (
    BLIND_PROMPT,
    PromptError,
    RestorationPrompt,
    canonicalize,
    format_restoration_prompt,
    parse_restoration_prompt,
)

FULL = "Deblur with sigma 1.5; Upsample to 4x; Denoise with sigma 0.06; Dejpeg with quality 30"
ALL_VERBS = ("'Deblur'", "'Upsample'", "'Denoise'", "'Dejpeg'", f"'{BLIND_PROMPT}'")

prompts = st.builds(
    RestorationPrompt,
    deblur=st.none() | st.floats(0.1, 8.0),
    upsample=st.none() | st.floats(1.0, 8.0),
    denoise=st.none() | st.floats(0.0, 0.5),
    dejpeg=st.none() | st.integers(1, 100),
)


def test_canonical_examples() -> None:
    assert str(parse_restoration_prompt(FULL)) == FULL
    assert parse_restoration_prompt(FULL) == RestorationPrompt(
        deblur=1.5, upsample=4.0, denoise=0.06, dejpeg=30
    )
    assert format_restoration_prompt(RestorationPrompt()) == BLIND_PROMPT
    assert str(RestorationPrompt(upsample=2.5)) == "Upsample to 2.5x"
    assert str(RestorationPrompt(upsample=4)) == "Upsample to 4x"
    assert str(RestorationPrompt(denoise=0.1)) == "Denoise with sigma 0.10"


def test_blind_and_scale() -> None:
    blind = parse_restoration_prompt(BLIND_PROMPT)
    assert blind.blind and blind == RestorationPrompt() and blind.scale == 1.0
    prompt = parse_restoration_prompt("Upsample to 2.5x")
    assert not prompt.blind and prompt.scale == 2.5


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("denoise with sigma 0.125", "Denoise with sigma 0.13"),  # half up on the text, not the binary float
        ("Deblur with sigma 1.25", "Deblur with sigma 1.3"),
        ("Deblur with sigma 1.249", "Deblur with sigma 1.2"),
        ("Upsample to 4.0x", "Upsample to 4x"),
        ("Upsample to 3.96 X", "Upsample to 4x"),
        ("Dejpeg with quality 30.5", "Dejpeg with quality 31"),
        ("Deblur with sigma .5", "Deblur with sigma 0.5"),
        ("Denoise with sigma 0", "Denoise with sigma 0.00"),
        ("  REMOVE all   Degradation. ", BLIND_PROMPT),
        ("dejpeg with quality 30, deblur with sigma 2.", "Deblur with sigma 2.0; Dejpeg with quality 30"),
    ],
)
def test_tolerant_examples(text: str, canonical: str) -> None:
    assert canonicalize(text) == canonical


@given(prompts)
def test_format_parse_round_trip(prompt: RestorationPrompt) -> None:
    text = format_restoration_prompt(prompt)
    assert parse_restoration_prompt(text) == prompt
    assert format_restoration_prompt(parse_restoration_prompt(text)) == text


@given(prompts)
def test_canonicalize_is_idempotent(prompt: RestorationPrompt) -> None:
    once = canonicalize(str(prompt))
    assert canonicalize(once) == once


def _scramble_case(draw: st.DrawFn, text: str) -> str:
    flips = draw(st.lists(st.booleans(), min_size=len(text), max_size=len(text)))
    return "".join(c.upper() if flip else c.lower() for c, flip in zip(text, flips))


def _loosen_clause(draw: st.DrawFn, clause: str) -> str:
    """Random case, random whitespace between words, extra digits, "4.0x" or "4 x" for "4x"."""
    space = st.sampled_from([" ", "  ", "\t", " \t "])
    words = clause.split(" ")
    number = words[-1]
    suffix = ""
    if number.endswith("x"):
        number, suffix = number[:-1], draw(st.sampled_from(["x", "X", " x"]))
    if "." in number:
        number += draw(st.sampled_from(["", "0", "00"]))  # more digits than the precision, same value
    elif suffix:
        number += draw(st.sampled_from(["", ".0"]))
    words = [_scramble_case(draw, w) for w in words[:-1]] + [number + suffix]
    return words[0] + "".join(draw(space) + w for w in words[1:])


@st.composite
def loose_texts(draw: st.DrawFn) -> tuple[str, RestorationPrompt]:
    prompt = draw(prompts)
    if prompt.blind:
        return _scramble_case(draw, BLIND_PROMPT) + draw(st.sampled_from(["", ".", " . "])), prompt
    clauses = str(prompt).split("; ")
    clauses = [_loosen_clause(draw, c) for c in draw(st.permutations(clauses))]
    text = clauses[0]
    for clause in clauses[1:]:
        text += draw(st.sampled_from([";", ",", " ; ", " , ", ";  "])) + clause
    pad = st.sampled_from(["", " ", "  "])
    return draw(pad) + text + draw(st.sampled_from(["", ".", " ."])) + draw(pad), prompt


@given(loose_texts())
def test_tolerant_variants_parse_to_the_same_value(case: tuple[str, RestorationPrompt]) -> None:
    text, prompt = case
    assert parse_restoration_prompt(text) == prompt
    assert canonicalize(text) == str(prompt)


@pytest.mark.parametrize(
    ("text", "position", "expected"),
    [
        ("", 0, ALL_VERBS),
        ("   ", 3, ALL_VERBS),
        ("Sharpen with sigma 1", 0, ALL_VERBS),
        ("Deblur sigma 1.5", 7, ("'with sigma'",)),
        ("Deblur with 1.5", 12, ("'sigma'",)),
        ("Deblur with sigma", 17, ("a number",)),
        ("Deblur with sigma x", 18, ("a number",)),
        ("Upsample to 4", 13, ("'x'",)),
        ("Upsample to 4y", 13, ("'x'",)),
        ("Upsample 4x", 9, ("'to'",)),
        ("Remove all", 10, ("'degradation'",)),
        ("Deblur with sigma 1; Deblur with sigma 2", 21, ("'Upsample'", "'Denoise'", "'Dejpeg'")),
        ("Remove all degradation; Deblur with sigma 1", 22, ("end of prompt",)),
        ("Deblur with sigma 1; Remove all degradation", 21, ("'Upsample'", "'Denoise'", "'Dejpeg'")),
        ("Deblur with sigma 1.5 please", 22, ("';'", "','", "'.'", "end of prompt")),
        ("Remove all degradation now", 23, ("'.'", "end of prompt")),
        ("Deblur with sigma 1.5;", 22, ("'Upsample'", "'Denoise'", "'Dejpeg'")),
        ("Deblur with sigma 1.5;; Denoise with sigma 0.1", 22, ("'Upsample'", "'Denoise'", "'Dejpeg'")),
        ("Deblur with sigma 1.5. Denoise with sigma 0.1", 23, ("end of prompt",)),
        ("Deblur with sigma 1.5..", 22, ("end of prompt",)),
        ("Deblur with sigma 1.5 ! ", 22, ("';'", "','", "'.'", "end of prompt")),
    ],
)
def test_bad_prompts_name_position_and_expected_words(
    text: str, position: int, expected: tuple[str, ...]
) -> None:
    with pytest.raises(PromptError) as info:
        parse_restoration_prompt(text)
    assert info.value.position == position
    assert info.value.expected == expected
    assert f"at position {position}:" in str(info.value)


def test_error_message_wording() -> None:
    with pytest.raises(PromptError, match=r"at position 7: expected 'with sigma' after 'Deblur'$"):
        parse_restoration_prompt("Deblur sigma 1.5")
    with pytest.raises(PromptError, match=r"'Deblur' appears twice"):
        parse_restoration_prompt("Deblur with sigma 1; Deblur with sigma 2")
    with pytest.raises(PromptError, match=r"cannot be combined"):
        parse_restoration_prompt("Deblur with sigma 1; Remove all degradation")


@pytest.mark.parametrize(
    ("text", "position", "message"),
    [
        ("Denoise with sigma 0.7", 19, "denoise sigma 0.7 is outside 0.00..0.50"),
        ("Denoise with sigma 0.505", 19, "denoise sigma 0.505 is outside 0.00..0.50"),
        ("Denoise with sigma -0.001", 19, "denoise sigma -0.001 is outside 0.00..0.50"),
        ("Deblur with sigma 0.04", 18, "deblur sigma 0.04 is outside 0.1..8.0"),
        ("Deblur with sigma 8.05", 18, "deblur sigma 8.05 is outside 0.1..8.0"),
        ("Upsample to 0.5x", 12, "upsample factor 0.5 is outside 1.0..8.0"),
        ("Upsample to 9x", 12, "upsample factor 9 is outside 1.0..8.0"),
        ("Dejpeg with quality 0", 20, "dejpeg quality 0 is outside 1..100"),
        ("Dejpeg with quality 101", 20, "dejpeg quality 101 is outside 1..100"),
        ("Dejpeg with quality 1" + "0" * 60, 20, "dejpeg quality 1" + "0" * 60 + " is outside 1..100"),
    ],
)
def test_out_of_range_numbers_are_errors(text: str, position: int, message: str) -> None:
    with pytest.raises(PromptError) as info:
        parse_restoration_prompt(text)
    assert info.value.position == position
    assert f"at position {position}: {message}" in str(info.value)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"deblur": 0.04},
        {"deblur": 8.1},
        {"upsample": 0.9},
        {"denoise": 0.51},
        {"denoise": -0.01},
        {"dejpeg": 0},
        {"dejpeg": 101},
        {"deblur": float("nan")},
        {"upsample": float("inf")},
    ],
)
def test_restoration_prompt_validates_ranges(kwargs: dict[str, float]) -> None:
    (field,) = kwargs
    with pytest.raises(ValueError, match=f"RestorationPrompt.{field}=.* is outside"):
        RestorationPrompt(**kwargs)


def test_restoration_prompt_rounds_and_rejects_non_numbers() -> None:
    assert RestorationPrompt(denoise=0.125, deblur=1.25, dejpeg=30) == RestorationPrompt(
        denoise=0.13, deblur=1.3, dejpeg=30
    )
    with pytest.raises(TypeError):
        RestorationPrompt(dejpeg=True)
    with pytest.raises(TypeError):
        RestorationPrompt(deblur="1.5")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        parse_restoration_prompt(None)  # type: ignore[arg-type]
