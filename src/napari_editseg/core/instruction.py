"""Method step 3: the edit instruction, and which of its tokens are the expression."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence


@dataclass(frozen=True)
class Instruction:
    expression: str  # normalised: single spaces, lower case
    text: str  # the instruction that is encoded
    token_positions: tuple[int, ...]  # positions of the expression's tokens in the encoded sequence
    truncated: bool  # True when the tokenizer cut the instruction
    word_positions: tuple[int, ...] = ()  # every word token of the instruction: no SOT, EOT or padding
    encoded_text: str = ""  # what the text encoder saw: ``text``, or its kept part when truncated

    def __post_init__(self) -> None:
        if not self.encoded_text:
            object.__setattr__(self, "encoded_text", self.text)

    @property
    def template_positions(self) -> tuple[int, ...]:
        """The template's own word tokens ("make", "the", "red"): words that are not the expression."""
        return tuple(p for p in self.word_positions if p not in self.token_positions)


def normalise_expression(expression: Any) -> str:
    if not isinstance(expression, str):
        raise ValueError(f"expression must be text, got {type(expression).__name__}")
    try:
        expression.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: bytes a terminal passed that are not UTF-8
        raise ValueError(f"expression {expression!r} is not valid UTF-8 text") from None
    text = re.sub(r"\s+", " ", expression).strip().lower()
    if not text:
        raise ValueError("expression is empty: describe the object to segment, e.g. 'the dog on the left'")
    return text


def _find(haystack: Sequence[int], needle: Sequence[int], start: int) -> int:
    """Index of ``needle`` in ``haystack``, looking at ``start`` first."""
    n = len(needle)
    candidates = [start] + [i for i in range(len(haystack) - n + 1) if i != start]
    for i in candidates:
        if list(haystack[i:i + n]) == list(needle):
            return i
    raise ValueError(
        "the instruction template splits the expression into other tokens than it has alone; "
        "put spaces around '{}' in instruction_template"
    )


def build_instruction(expression: str, template: str, tokenizer: Any, max_length: int) -> Instruction:
    """Fill the template and locate the expression's tokens (never SOT/EOT/padding/template words)."""
    expression = normalise_expression(expression)
    text = template.replace("{}", expression)
    plain = tokenizer(text, add_special_tokens=False).input_ids
    expression_ids = tokenizer(expression, add_special_tokens=False).input_ids
    prefix_ids = tokenizer(template.split("{}")[0].strip(), add_special_tokens=False).input_ids
    start = _find(plain, expression_ids, len(prefix_ids))
    with_special = tokenizer(text).input_ids
    offset = 1 if with_special and with_special[0] == tokenizer.bos_token_id else 0
    n_special = len(with_special) - len(plain)
    truncated = len(plain) + n_special > max_length
    last_content = max_length - (n_special - offset)  # positions from here on hold EOT/padding
    positions = tuple(p for p in range(start + offset, start + offset + len(expression_ids)) if p < last_content)
    if not positions:
        raise ValueError(
            f"the expression does not fit in the text encoder's {max_length} tokens after the template's words"
        )
    words = tuple(range(offset, min(offset + len(plain), last_content)))
    kept = tokenizer.decode(plain[:last_content - offset]).strip() if truncated else text
    return Instruction(expression, text, positions, truncated, words, kept)


def baseline_text(template: str, baseline: str) -> str:
    """What the instruction is compared with for the relevance prior: the empty text, or the
    template with the expression left out ("make the {} red" → "make the red")."""
    return "" if baseline == "empty" else " ".join(template.replace("{}", " ").split())


DECOY_VOCABULARY = 2000  # decoy words come from the tokenizer's first whole-word entries (its most frequent)
_WORD_MARKS = ("</w>", "▁", "Ġ")  # CLIP's word end, sentencepiece's and byte-level BPE's word start


def decoy_expressions(tokenizer: Any, expression: str, count: int, seed: int) -> list[str]:
    """``count`` expressions of as many words as ``expression``, none of its words: what "an
    expression of this kind that names nothing in particular" is for any model (the confidence
    ranks the expression's effect among theirs). Words are whole-word vocabulary entries of three
    letters or more among the tokenizer's first :data:`DECOY_VOCABULARY` (BPE and sentencepiece
    vocabularies come roughly in order of frequency); a vocabulary without such words (a tiny test
    tokenizer) gives random letters of the expression's word lengths. Drawn from ``seed``, so the
    same expression gets the same decoys."""
    import numpy as np

    own = normalise_expression(expression).split()
    vocabulary = tokenizer.get_vocab()
    words = {}
    for token, index in vocabulary.items():
        word = token
        for mark in _WORD_MARKS:
            word = word.replace(mark, "")
        if word != token and len(word) >= 3 and word.isascii() and word.isalpha() and word.islower() \
                and word not in own:
            words[word] = min(index, words.get(word, index))
    common = sorted(words, key=words.get)[:DECOY_VOCABULARY]
    rng = np.random.default_rng([seed, len(own)])
    if len(common) >= 2 * len(own):
        return [" ".join(rng.choice(common, size=len(own), replace=False)) for _ in range(count)]
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    return [" ".join("".join(rng.choice(letters, size=len(w))) for w in own) for _ in range(count)]


def decoy_instructions(instructions: Sequence[Instruction], count: int, seed: int, template: str, tokenizer: Any,
                       max_length: int) -> list[Instruction]:
    """The ``decoys`` setting's rows: ``count`` decoy expressions (:func:`decoy_expressions`) for each
    word count among ``instructions``, in the same template."""
    if not count:
        return []
    by_length: dict[int, str] = {}
    for instruction in instructions:
        by_length.setdefault(len(instruction.expression.split()), instruction.expression)
    return [build_instruction(decoy, template, tokenizer, max_length) for expression in by_length.values()
            for decoy in decoy_expressions(tokenizer, expression, count, seed)]
