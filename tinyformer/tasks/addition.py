"""Addition in any base 2-16, as a character-level task: `+A+B+C+` with C = A + B, plain or reversed digits.

Format (the one of the hexadecimal-addition reference, McLeish et al.'s reversed setting as an option):
`+` opens the problem, separates the operands, marks where the answer starts and closes it. The prompt
`+A+B+` is not supervised; the answer digits and the closing `+` are (exact match of the whole answer).
- plain: most significant digit first, `+1342+879+2221+`;
- reversed (default): least significant digit first in operands and answer, `5672 -> 2765`, so each answer
  digit depends only on digits already seen and the carry;
- index hints (optional): each digit is preceded by a letter naming its place value (`g` = units, `h` =
  tens, ...), in operands and answer alike, so `+g2h4+g1+g3h4+` is 42 + 1 = 43 reversed;
- padded (optional, Cho et al.'s recipe): both operands zero-padded to the longer one's digit count and the
  answer to one digit more, `+0879+1342+02221+` plain.
Each operand's digit count is drawn independently and uniformly from the length range; numbers of more than
one digit have a non-zero leading digit. Task options: `add:base=16,reverse=false,hints=true,pad=true`.
Position ids (`--pe abacus`): digits (and hint letters) count 1, 2, ... inside their number, `+` gets 0.
Position coupling (`--pe coupled`, Cho et al., 2024): every token of place value p (the units are place 0)
has id p + 1 in both operands; in the answer, each token has the id of the place it predicts (the `+` that
opens the answer: the units' id 1), so attention to equal ids finds both operand digits of that place.
The plain format is coupled only when padded (its answer's length, hence the place of its first digit, is
known from the prompt only then).
"""

from __future__ import annotations

import numpy as np

from tinyformer.errors import TinyformerError
from tinyformer.tasks.base import SPECIAL_TOKENS, Examples, Task
from tinyformer.tasks.registry import register_task

DIGITS = "0123456789abcdef"
# place-value hints: letters that are not hex digits, units first (46 places)
HINTS = "ghijklmnopqrstuvwxyzGHIJKLMNOPQRSTUVWXYZ" + "ABCDEF"
PLUS = "+"
# lengths passed around by the lab are one integer per example; a pair of operand digit counts (n1, n2)
# travels as n1 * PAIR + n2; a plain n < PAIR asks for the longest problem of n digits (both operands n
# digits, the sum carrying into digit n+1), which is what the lab builds to size position tables
PAIR = 1 << 12
OPTIONS = ("base", "reverse", "hints", "pad")
TRUE_WORDS, FALSE_WORDS = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def pair_code(n1, n2):
    """Two operand digit counts as one length code (what `sample_lengths` returns)."""
    return np.asarray(n1, dtype=np.int64) * PAIR + np.asarray(n2, dtype=np.int64)


def split_code(codes) -> tuple[np.ndarray, np.ndarray]:
    """Length codes -> (digits of operand 1, digits of operand 2); a plain n means (n, n)."""
    codes = np.asarray(codes, dtype=np.int64)
    paired = codes >= PAIR
    return np.where(paired, codes // PAIR, codes), np.where(paired, codes % PAIR, codes)


def to_digits(value: int, base: int) -> str:
    """A non-negative Python int in `base`, most significant digit first (the reference for tests too)."""
    out = []
    while True:
        value, d = divmod(value, base)
        out.append(DIGITS[d])
        if value == 0:
            return "".join(reversed(out))


def add_digit_rows(a: np.ndarray, b: np.ndarray, base: int) -> np.ndarray:
    """Column addition of least-significant-first digit rows [N, W] (zero-padded): [N, W + 1] sum digits."""
    n, width = a.shape
    out = np.zeros((n, width + 1), dtype=np.int64)
    carry = np.zeros(n, dtype=np.int64)
    for j in range(width):  # the carry runs along the digits; rows are vectorized
        total = a[:, j] + b[:, j] + carry
        out[:, j], carry = total % base, total // base
    out[:, width] = carry
    return out


class Addition(Task):
    """`+A+B+C+` in base `base` (2..16), reversed digits or not, with or without place-value hints, padded
    or not."""

    base: int = 10
    reverse: bool = True
    hints: bool = False
    padded: bool = False  # the option pad=true (`pad` is the padding token's id)

    def __init__(self, base: int | None = None, reverse: bool | None = None, hints: bool | None = None,
                 pad: bool | None = None) -> None:
        self.base = int(self.base if base is None else base)
        self.reverse = bool(self.reverse if reverse is None else reverse)
        self.hints = bool(self.hints if hints is None else hints)
        self.padded = bool(self.padded if pad is None else pad)
        if not 2 <= self.base <= 16:
            raise TinyformerError(f"addition base must be between 2 and 16 (digits 0-9a-f), got {self.base}")
        # ids: digits, then hint letters (both are "symbols": Abacus ids count them), specials, then "+"
        self.n_symbols = self.base + (len(HINTS) if self.hints else 0)
        self.max_length = len(HINTS) - 1 if self.hints else PAIR - 2  # the answer has one digit more
        self.description = (f"addition in base {self.base}, {'reversed' if self.reverse else 'plain'} digits"
                            f"{', index hints' if self.hints else ''}{', zero-padded' if self.padded else ''}: +A+B+C+")

    @classmethod
    def from_options(cls, text: str) -> Addition:
        """`base=16,reverse=false,hints=true,pad=true` (any subset, any order) -> a configured task."""
        values: dict = {}
        for item in filter(None, (s.strip() for s in text.split(","))):
            key, eq, value = item.partition("=")
            key, value = key.strip(), value.strip().lower()
            if not eq or key not in OPTIONS:
                raise TinyformerError(f"task option {item!r} is not one of base=N, reverse=true|false, "
                                      "hints=true|false, pad=true|false")
            if key == "base":
                try:
                    values[key] = int(value)
                except ValueError:
                    raise TinyformerError(f"task option base={value!r} is not an integer between 2 and 16") from None
            elif value in TRUE_WORDS + FALSE_WORDS:
                values[key] = value in TRUE_WORDS
            else:
                raise TinyformerError(f"task option {key}={value!r}: use true or false")
        return cls(**values)

    # --- vocabulary ------------------------------------------------------------------------------
    @property
    def plus(self) -> int:
        return self.n_symbols + len(SPECIAL_TOKENS)

    @property
    def vocab_size(self) -> int:
        return self.plus + 1

    @property
    def vocab(self) -> list[str]:
        """Id -> string: digits, hint letters (when on), the specials, then "+"."""
        hints = list(HINTS) if self.hints else []
        return list(DIGITS[: self.base]) + hints + list(SPECIAL_TOKENS) + [PLUS]

    def decode(self, ids) -> str:
        """Ids -> the text, e.g. "+1342+879+2221+" (padding left out)."""
        vocab = self.vocab
        return "".join(vocab[int(i)] for i in ids if int(i) != self.pad)

    def encode(self, text: str) -> list[int]:
        """Text -> ids, one character per token; a symbol outside the vocabulary is a one-line error."""
        index = {s: i for i, s in enumerate(self.vocab) if len(s) == 1}
        bad = sorted({c for c in text if c not in index})
        if bad:
            raise TinyformerError(
                f"text has symbols outside the vocabulary of task {self.name} (base {self.base}): "
                f"{' '.join(map(repr, bad))}; valid symbols: {''.join(index)}"
            )
        return [index[c] for c in text]

    # --- human-readable prompts and answers ------------------------------------------------------
    def prompt_ids(self, text: str) -> list[int]:
        """`1342+879` (or `1342 + 879 =`), most significant digit first in the task's base, -> the prompt
        `+A+B+` in the task's own form (reversed digits, hints). Text starting with `+` is already in it."""
        text = text.strip()
        if text.startswith(PLUS):
            return self.encode(text)
        body = text.rstrip("= ").replace(" ", "").lower()
        operands = body.split(PLUS)
        if len(operands) != 2 or not all(operands):
            raise TinyformerError(f"write an addition as A+B (e.g. 1342+879), got {text!r}")
        for number in operands:
            bad = sorted(set(number) - set(DIGITS[: self.base]))
            if bad:
                raise TinyformerError(f"{number!r} is not a number in base {self.base} (digits "
                                      f"{DIGITS[: self.base]}); task {self.name} adds base-{self.base} numbers")
        width = max(len(n.lstrip("0") or "0") for n in operands) if self.padded else 0
        return self.encode(PLUS + PLUS.join(self.written(n, width) for n in operands) + PLUS)

    def written(self, number: str, width: int = 0) -> str:
        """A number as people write it -> as this task writes it (reversed, with place-value hints, zero-padded
        to `width` digits)."""
        number = (number.lstrip("0") or "0").rjust(width, "0")
        if self.reverse:
            number = number[::-1]
        if not self.hints:
            return number
        places = range(len(number)) if self.reverse else reversed(range(len(number)))
        return "".join(HINTS[k] + d for k, d in zip(places, number))

    def prompt_text(self, ids) -> str:
        """`+2431+978+` -> `1342+879`."""
        numbers = [self.answer_text(self.encode(part)) for part in self.decode(ids).strip(PLUS).split(PLUS)]
        return PLUS.join(numbers)

    def answer_length(self, prompt) -> int:
        numbers = self.decode(prompt).strip(PLUS).split(PLUS)
        digits = max(sum(c in DIGITS[: self.base] for c in n) for n in numbers) + 1  # a carry adds one
        return digits * (2 if self.hints else 1) + 1

    def answer_end(self) -> int:
        return self.plus  # the answer closes with "+"

    def answer_text(self, ids) -> str:
        """The generated answer digits (reversed, hints) -> the sum as people write it, e.g. `2221`."""
        ids = [int(i) for i in ids]
        if self.plus in ids:
            ids = ids[: ids.index(self.plus)]
        digits = "".join(self.vocab[i] for i in ids if i < self.base)
        text = digits[::-1] if self.reverse else digits
        return text.lstrip("0") or ("0" if text else "")

    def same_answer(self, got: str, want: str) -> bool:
        try:
            return int(got.strip(), self.base) == int(want.strip(), self.base)
        except ValueError:
            return got.strip().lower() == want.strip().lower()

    # --- lengths ---------------------------------------------------------------------------------
    def check_range(self, lo: int, hi: int) -> tuple[int, int]:
        """The digit range itself, or a one-line error when it is empty or longer than the format allows."""
        if lo < 1 or hi < lo:
            raise TinyformerError(f"digit range {lo}-{hi} is empty; use LO-HI with 1 <= LO <= HI")
        if hi > self.max_length:
            why = f"index hints name {len(HINTS)} places" if self.hints else "length codes are limited"
            raise TinyformerError(f"digit range {lo}-{hi} of task {self.name} is too long: {why}, so operands "
                                  f"may have at most {self.max_length} digits")
        return lo, hi

    def sample_lengths(self, rng: np.random.Generator, lo: int, hi: int, count: int) -> np.ndarray:
        """Length codes of `count` problems, each operand's digit count uniform in lo..hi, drawn independently."""
        first, last = self.check_range(lo, hi)
        return pair_code(rng.integers(first, last + 1, size=count), rng.integers(first, last + 1, size=count))

    def sequence_length(self, length: int) -> int:
        """Tokens of the longest problem whose operands have at most `length` digits (a carry adds one)."""
        n1, n2 = split_code(length)
        if self.padded:
            n1 = n2 = max(n1, n2)
        digits = int(n1) + int(n2) + max(int(n1), int(n2)) + 1
        return 4 + (2 * digits if self.hints else digits)

    # --- building --------------------------------------------------------------------------------
    def random_operands(self, rng: np.random.Generator, n_digits: np.ndarray, width: int) -> np.ndarray:
        """[N, width] least-significant-first digits, row i with exactly n_digits[i] digits, zeros above."""
        digits = rng.integers(0, self.base, size=(len(n_digits), width))
        col = np.arange(width)[None, :]
        leading = rng.integers(1, self.base, size=len(n_digits))  # a number of 2+ digits has no leading zero
        n = n_digits[:, None]
        digits = np.where((col == n - 1) & (n > 1), leading[:, None], digits)
        return np.where(col < n, digits, 0)

    def number_tokens(self, digits: np.ndarray, n: np.ndarray, q: np.ndarray) -> np.ndarray:
        """Token ids of each row's number at offsets `q` [N, T] into it (first `n` digits, least significant
        first in `digits` [N, W]), written in this format; offsets outside the number give garbage to mask."""
        step = 2 if self.hints else 1
        k = q // step  # which digit, in writing order
        place = k if self.reverse else n[:, None] - 1 - k
        place = np.clip(place, 0, digits.shape[1] - 1)
        token = np.take_along_axis(digits, place, axis=1)
        if self.hints:  # the hint letter of a place comes right before its digit
            token = np.where(q % 2 == 0, self.base + place, token)
        return token

    def generate(self, rng: np.random.Generator, lengths: np.ndarray) -> Examples:
        """One problem per length code, padded with `<pad>`; `lengths` of the result: the longer operand."""
        n1, n2 = split_code(lengths)
        for lo, hi in ((n1.min(initial=1), n1.max(initial=1)), (n2.min(initial=1), n2.max(initial=1))):
            self.check_range(int(lo), int(hi))
        width = int(max(n1.max(initial=1), n2.max(initial=1)))
        a = self.random_operands(rng, n1, width)
        b = self.random_operands(rng, n2, width)
        # a plain length n asks for the longest problem: n-digit operands whose sum carries into digit n+1
        longest = np.flatnonzero(np.asarray(lengths) < PAIR)
        a[longest, n1[longest] - 1] = self.base - 1
        b[longest, n2[longest] - 1] = self.base - 1
        c = add_digit_rows(a, b, self.base)
        n3 = np.maximum(n1, n2) + c[np.arange(len(c)), np.maximum(n1, n2)].astype(bool)
        if self.padded:  # written with leading zeros: both operands as long as the longer, the answer one more
            n1 = n2 = np.maximum(n1, n2)
            n3 = n1 + 1
        # layout per row: + A + B + C +, each number taking `step` tokens per digit
        step = 2 if self.hints else 1
        a_start = np.ones_like(n1)
        b_start = a_start + step * n1 + 1
        c_start = b_start + step * n2 + 1
        seq_lens = c_start + step * n3 + 1
        col = np.arange(int(seq_lens.max(initial=0)))[None, :]
        tokens = np.full((len(n1), col.shape[1]), self.plus, dtype=np.int64)
        for digits, n, start in ((a, n1, a_start), (b, n2, b_start), (c, n3, c_start)):
            q = col - start[:, None]
            inside = (q >= 0) & (q < step * n[:, None])
            tokens = np.where(inside, self.number_tokens(digits, n, q), tokens)
        tokens = np.where(col < seq_lens[:, None], tokens, self.pad)
        supervised = (col >= c_start[:, None]) & (col < seq_lens[:, None])
        return Examples(tokens, supervised, seq_lens.astype(np.int64), np.maximum(n1, n2))

    def build(self, rng: np.random.Generator, lengths: np.ndarray):
        ex = self.generate(rng, lengths)
        return ex.tokens, ex.supervised

    # --- position coupling -----------------------------------------------------------------------
    def coupling_refusal(self) -> str | None:
        if not self.reverse and not self.padded:
            return (f"task {self.name} writes the answer's most significant digit first, so the place of each "
                    "answer digit is known from the prompt only when the numbers are padded: add pad=true "
                    "(e.g. add:reverse=false,pad=true)")
        return None

    def coupled_positions(self, ids: np.ndarray) -> np.ndarray:
        refusal = self.coupling_refusal()
        if refusal:
            raise TinyformerError(refusal)
        ids = np.asarray(ids)
        step = 2 if self.hints else 1
        is_plus = ids == self.plus
        number = np.cumsum(is_plus, axis=1)  # 1: first operand, 2: second, 3: the answer, 4: after it
        inside = ~is_plus & (ids < self.n_symbols)
        out = np.zeros(ids.shape, dtype=np.int64)
        for k in (1, 2):
            here = inside & (number == k)
            index = np.cumsum(here, axis=1) - 1  # writing index inside the number
            digits = here.sum(1, keepdims=True) // step
            place = index // step if self.reverse else digits - 1 - index // step
            out = np.where(here, place + 2, out)
        # the answer: each token carries the id of its own place (Cho et al.), the opening `+` that of the
        # place before the first answer digit, so the token predicting place q finds q's operand digits at
        # its id +1 (reversed) or -1 (most significant first), where no answer token visible to it sits
        opening = is_plus & (number == 3)
        answer = (inside & (number == 3)) | opening
        own = (np.cumsum(answer, axis=1) - 2) // step  # the answer index of each token's place; -1 at the opening
        if self.reverse:
            place = own
        else:  # padded: the answer has one digit more than the (equal) operands
            operand_digits = (inside & (number == 1)).sum(1, keepdims=True) // step
            place = operand_digits - own
        return np.where(answer, place + 2, out)


@register_task
class Add(Addition):
    name = "add"
    base, reverse, hints = 10, True, False


@register_task
class AddHex(Addition):
    name = "add-hex"
    base, reverse, hints = 16, True, False
