"""The think-then-answer output format, how reference chains are written, and a parser that never crashes.

The format (MedAD-R1's structured think-then-answer paradigm, in our closed vocabulary)::

    <think> modality: mri organ: brain finding: tumor region: upper-left size: small conclusion: abnormal </think>
    <answer> yes </answer>

- ``<think> ... </think>`` comes first and holds the six fields ``modality: organ: finding: region: size:
  conclusion:`` (each key once, each followed by one allowed value; the order above is the reference order,
  any order parses). This is the "reasoning": what is seen, where, how big, and what it means.
- ``<answer> ... </answer>`` follows and answers the question asked:

  ===============  ==========================================  ==========================
  question type    question                                    answer tokens
  ===============  ==========================================  ==========================
  ``abnormal``     Is this image abnormal?                     ``yes`` or ``no``
  ``organ``        Which organ and imaging modality is this?   ``<organ> <modality>``
  ``region``       Where is the finding (3x3 grid)?            a grid cell, or ``none``
  ``size``         How large is the finding?                   ``small|medium|large|none``
  ===============  ==========================================  ==========================

- Nothing may come before ``<think>``, between ``</think>`` and ``<answer>``, or after ``</answer>`` (an
  ``<eos>`` / ``<pad>`` tail is allowed).

``parse_output`` reads anything (text, a token list, an id list, ``None``) and returns a ``ParsedOutput`` with
``valid`` and, when invalid, what is ``missing`` and which ``errors`` were seen. It extracts what it can from
broken outputs (a truncated think block still yields its fields), so the rewards can give partial credit, and
it never raises.

Explained in notebooks/30_reasoning_vqa_sft.ipynb.

Example::

    from medad_edu.reasoning.format import parse_output
    p = parse_output("<think> modality: ct </think> <answer> yes", "abnormal")
    p.valid    # False
    p.missing  # ['</answer>', 'organ:', 'finding:', 'region:', 'size:', 'conclusion:', 'answer']

Defined in: notebooks/30_reasoning_vqa_sft.ipynb
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from .vocab import (ANSWER_CLOSE, ANSWER_OPEN, BOS, EOS, GRID_NAMES, MODALITIES, ORGANS, PAD, QUESTION_TYPES,
                    REGIONS, SIZES, THINK_CLOSE, THINK_KEYS, THINK_OPEN, THINK_VALUES, UNK, VOCAB, YES_NO, tokenize)

# The answer fields each question type asks for, and the values each field may take.
ANSWER_FIELDS: dict[str, tuple[str, ...]] = {"abnormal": ("abnormal",), "organ": ("organ", "modality"),
                                             "region": ("region",), "size": ("size",)}
ANSWER_VALUES: dict[str, tuple[str, ...]] = {"abnormal": YES_NO, "organ": ORGANS, "modality": MODALITIES,
                                             "region": tuple(r for r in REGIONS if r != "unknown"),
                                             "size": tuple(s for s in SIZES if s != "unknown")}


# --- writing ---------------------------------------------------------------------------------------------------
def think_text(facts: Mapping[str, str]) -> str:
    """The reference reasoning for one image: ``<think> modality: .. organ: .. ... conclusion: .. </think>``."""
    body = " ".join(f"{k}: {facts[k]}" for k in THINK_KEYS)
    return f"{THINK_OPEN} {body} {THINK_CLOSE}"


def answer_tokens(facts: Mapping[str, str], qtype: str) -> list[str]:
    """The correct answer tokens for question type ``qtype`` given an image's facts."""
    if qtype == "abnormal":
        return ["yes" if facts["conclusion"] == "abnormal" else "no"]
    if qtype == "organ":
        return [facts["organ"], facts["modality"]]
    if qtype == "region":
        return [facts["region"]]
    if qtype == "size":
        return [facts["size"]]
    raise ValueError(f"question type must be one of {QUESTION_TYPES}; got {qtype!r}")


def reference_output(facts: Mapping[str, str], qtype: str) -> str:
    """The full reference chain (think, then answer) the policy is fine-tuned on."""
    return f"{think_text(facts)} {ANSWER_OPEN} {' '.join(answer_tokens(facts, qtype))} {ANSWER_CLOSE}"


# --- reading ---------------------------------------------------------------------------------------------------
@dataclass
class ParsedOutput:
    """What ``parse_output`` found. ``valid`` is the format check; the fields are filled even when invalid."""

    valid: bool
    think: dict[str, str] = field(default_factory=dict)  # key (without ':') -> value, allowed values only
    answer: list[str] | None = None  # tokens between <answer> and </answer>; None if the block is missing
    answer_fields: dict[str, str] | None = None  # parsed answer (per ANSWER_FIELDS) or None if unparsable
    missing: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    text: str = ""
    think_first: bool = False  # a <think> tag comes before the <answer> tag (think, then answer)

    @property
    def think_complete(self) -> bool:
        return all(k in self.think for k in THINK_KEYS)


def _as_tokens(output: Any) -> tuple[list[str], str]:
    """Accept text, a list of tokens, a list / tensor of ids, or anything else (str() of it)."""
    if output is None:
        return [], ""
    if isinstance(output, bytes):
        output = output.decode("utf-8", errors="replace")
    if hasattr(output, "tolist") and not isinstance(output, str):  # tensor / ndarray of ids
        output = output.tolist()
    if isinstance(output, (list, tuple)):
        if all(isinstance(x, int) and not isinstance(x, bool) for x in output):
            output = VOCAB.decode(output)
        else:
            output = " ".join(str(x) for x in output)
    if not isinstance(output, str):
        output = str(output)
    return tokenize(output), output


def parse_answer(tokens: list[str], qtype: str) -> tuple[dict[str, str] | None, str | None]:
    """Answer tokens -> ``({field: value}, None)``, or ``(None, error)`` when they do not answer ``qtype``."""
    names = ANSWER_FIELDS[qtype]
    if len(tokens) != len(names):
        return None, f"answer to {qtype!r} needs {len(names)} token(s) ({' '.join(names)}); got {len(tokens)}"
    out = {}
    for name, tok in zip(names, tokens):
        if tok not in ANSWER_VALUES[name]:
            return None, f"{tok!r} is not a valid {name} answer"
        out[name] = tok
    return out, None


def parse_output(output: Any, qtype: str | None = None) -> ParsedOutput:
    """Parse a generated output against the documented format; never raises on any input.

    ``qtype`` (one of ``abnormal organ region size``) makes the answer block part of the check: it must then
    answer that question (``yes``/``no``, ``<organ> <modality>``, a region, a size). Without it the answer
    block only has to be present and non-empty.
    """
    if qtype is not None and qtype not in ANSWER_FIELDS:
        raise ValueError(f"question type must be one of {QUESTION_TYPES} or None; got {qtype!r}")
    try:
        tokens, text = _as_tokens(output)
    except Exception as err:  # a str() that raises, say: still no crash
        return ParsedOutput(False, missing=[THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE],
                            errors=[f"unreadable output ({type(err).__name__})"])
    # An <eos>/<pad> tail is allowed; everything after the first <eos> is ignored (the policy stops there).
    if EOS in tokens:
        tokens = tokens[:tokens.index(EOS)]
    tokens = [t for t in tokens if t != PAD]
    res = ParsedOutput(valid=False, text=text)
    if not tokens:
        res.errors.append("empty output")
    # <unk> (an id the vocabulary does not know) and a stray <bos> are no words of the output language either.
    unknown = sorted({t for t in tokens if t not in VOCAB or t in (UNK, BOS)})
    if unknown:
        res.errors.append("unknown token(s): " + " ".join(repr(t) for t in unknown[:5]))

    pos = {tag: [i for i, t in enumerate(tokens) if t == tag]
           for tag in (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)}
    for tag, where in pos.items():
        if not where:
            res.missing.append(tag)
        elif len(where) > 1:
            res.errors.append(f"{tag} appears {len(where)} times")
    first = {tag: (where[0] if where else None) for tag, where in pos.items()}
    t_open, t_close, a_open, a_close = (first[t] for t in (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE))
    present = [(tag, i) for tag, i in first.items() if i is not None]
    if [tag for tag, _ in sorted(present, key=lambda x: x[1])] != [tag for tag, _ in present]:
        res.errors.append("tags out of order (expected <think> </think> <answer> </answer>)")
    if t_open is not None and t_open > 0:
        res.errors.append("text before <think>")
    if t_close is not None and a_open is not None and a_open > t_close + 1:
        res.errors.append("text between </think> and <answer>")
    if a_close is not None and a_close < len(tokens) - 1:
        res.errors.append("text after </answer>")

    res.think_first = t_open is not None and a_open is not None and t_open < a_open
    # Think block: from <think> to </think>, or (truncated / broken) to <answer> or the end.
    if t_open is not None:
        stops = [i for i in (t_close, a_open) if i is not None and i > t_open]
        body = tokens[t_open + 1:min(stops) if stops else len(tokens)]
        _parse_think(body, res)
    else:
        res.missing.extend(k + ":" for k in THINK_KEYS)

    # Answer block: only when both tags are present and in order.
    if a_open is not None and a_close is not None and a_close > a_open:
        res.answer = tokens[a_open + 1:a_close]
        if not res.answer:
            res.missing.append("answer")
        elif qtype is not None:
            res.answer_fields, err = parse_answer(res.answer, qtype)
            if err:
                res.errors.append(err)
    elif a_open is not None or a_close is not None:
        res.missing.append("answer")
    res.missing = list(dict.fromkeys(res.missing))
    res.valid = not res.missing and not res.errors
    return res


def _parse_think(body: list[str], res: ParsedOutput) -> None:
    seen: set[str] = set()
    i = 0
    while i < len(body):
        tok = body[i]
        key = tok[:-1] if tok.endswith(":") else None
        if key not in THINK_VALUES:
            res.errors.append(f"unexpected token {tok!r} in <think>")
            i += 1
            continue
        value = body[i + 1] if i + 1 < len(body) else None
        if value is None or value.endswith(":"):
            res.errors.append(f"no value after {tok!r}")
            i += 1
            continue
        if value not in THINK_VALUES[key]:
            res.errors.append(f"{value!r} is not a valid value for {tok!r}")
        elif key in seen:
            res.errors.append(f"{tok!r} given twice")
        else:
            res.think[key] = value
        seen.add(key)
        i += 2
    res.missing.extend(k + ":" for k in THINK_KEYS if k not in seen)


def region_cell(name: str) -> tuple[int, int] | None:
    """Grid cell name -> (row, col), or None for ``none`` / ``unknown`` / anything else."""
    if name in GRID_NAMES:
        i = GRID_NAMES.index(name)
        return divmod(i, 3)
    return None
