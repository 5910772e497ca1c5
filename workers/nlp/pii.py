"""Personal data in a transcript: where it is, what kind it is, and the text with it redacted.

Recognisers never write digits in spoken form ("four one one one ..."), so every numeric finding
starts from :func:`~callstream.workers.nlp.numbers.spoken_digits`, which finds digit runs in
either form with their offsets in the original text; a run is then classified by checksum and
number plan, never by shape alone where a check exists:

* ``card_number`` — 13 to 19 digits passing Luhn (``stdnum.luhn``);
* ``iban`` — valid per ``stdnum.iban`` (mod 97), written ("GB82 WEST 1234 ...") or spelled
  ("g b eight two w e s t one two ...");
* ``ssn`` — a valid US SSN (``stdnum.us.ssn``) written as ``123-45-6789``, or nine digits said
  after "social", "security" or "ssn";
* ``phone_number`` — a number ``phonenumbers`` finds valid for the region (or international
  after "+"/"plus"); a number that is only the right length counts unless the words before it
  say it is an account, order or reference number;
* ``email`` — written (``john.doe@example.com``) or spoken ("j o h n dot doe at gmail dot com");
* ``digits`` — any other run of six or more digits (amounts said with "thousand" or "million"
  are quantities, not identifiers, and are left alone).

When findings overlap the most specific wins, in the order above (a checksum beats a length).
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Sequence
from dataclasses import dataclass

import phonenumbers
from phonenumbers import NumberParseException
from stdnum import iban as stdnum_iban
from stdnum import luhn
from stdnum.us import ssn as stdnum_ssn

from callstream.workers.nlp.numbers import DigitRun, spoken_digits
from callstream.workers.nlp.tokens import DIGIT_WORDS, Token, tokenize

CARD_NUMBER = "card_number"
IBAN = "iban"
SSN = "ssn"
EMAIL = "email"
PHONE_NUMBER = "phone_number"
DIGITS = "digits"
# Most specific first: when two findings overlap, the one listed first is kept.
PRECEDENCE: tuple[str, ...] = (IBAN, CARD_NUMBER, SSN, EMAIL, PHONE_NUMBER, DIGITS)

MIN_DIGITS = 6  # a run this long is redacted even when we cannot say what it is
CONTEXT_WORDS = 6  # how many words before a number are read for what it is


@dataclass(frozen=True, slots=True)
class Entity:
    """A finding: ``type`` (one of :data:`PRECEDENCE`), ``start``/``end`` character offsets
    (end exclusive) in the text it was found in."""

    type: str
    start: int
    end: int


def find_pii(text: str, *, region: str = "US") -> list[Entity]:
    """The personal data in ``text``: sorted by offset, never overlapping. ``region`` is the
    ISO 3166 country whose number plan reads phone numbers written without a country code."""
    tokens = tokenize(text)
    if not tokens:
        return []
    runs = spoken_digits(text)
    candidates = [*_emails(text, tokens), *_ibans(text, tokens, runs)]
    starts = [t.start for t in tokens]
    for run in runs:
        entity = _classify(text, tokens, starts, run, region)
        if entity is not None:
            candidates.append(entity)
    return _resolve(candidates)


def redact(text: str, entities: Sequence[Entity]) -> str:
    """``text`` with each entity's span replaced by ``[TYPE]`` (``[CARD_NUMBER]``, ...).

    Raises ``ValueError`` for a span outside the text or spans that overlap: both mean the
    entities were not found in this text.
    """
    parts: list[str] = []
    position = 0
    for entity in sorted(entities, key=lambda e: (e.start, e.end)):
        if not 0 <= entity.start < entity.end <= len(text):
            raise ValueError(f"{entity} is not a span of a text of {len(text)} characters")
        if entity.start < position:
            raise ValueError(f"{entity} overlaps the entity before it (ending at {position})")
        parts.append(text[position : entity.start])
        parts.append(f"[{entity.type.upper()}]")
        position = entity.end
    parts.append(text[position:])
    return "".join(parts)


def _resolve(candidates: list[Entity]) -> list[Entity]:
    """Keep the most specific, then the longest, of overlapping findings."""
    rank = {kind: i for i, kind in enumerate(PRECEDENCE)}
    kept: list[Entity] = []
    for entity in sorted(candidates, key=lambda e: (rank[e.type], e.start - e.end, e.start)):
        if all(entity.end <= k.start or k.end <= entity.start for k in kept):
            kept.append(entity)
    return sorted(kept, key=lambda e: e.start)


# --- numbers -------------------------------------------------------------------------------

_SSN_WRITTEN = re.compile(r"\d{3}[- ]\d{2}[- ]\d{4}")
_SSN_WORDS = frozenset({"social", "security", "ssn"})
_PHONE_WORDS = frozenset(
    {"phone", "telephone", "call", "number", "mobile", "cell", "reach", "line", "text", "fax"}
)
_ID_WORDS_TEXT = """
    account order reference ref policy member membership customer invoice ticket case
    tracking confirmation pin card
"""
_ID_WORDS = frozenset(_ID_WORDS_TEXT.split())
_MAGNITUDES = frozenset({"thousand", "million", "billion", "trillion"})


def _classify(
    text: str, tokens: list[Token], starts: list[int], run: DigitRun, region: str
) -> Entity | None:
    digits = run.digits
    first = bisect.bisect_left(starts, run.start)  # the run's first token
    context = {t.text for t in tokens[max(0, first - CONTEXT_WORDS) : first]}
    if 13 <= len(digits) <= 19 and luhn.is_valid(digits):
        return Entity(CARD_NUMBER, run.start, run.end)
    if len(digits) == 9 and stdnum_ssn.is_valid(digits):
        said_ssn = bool(context & _SSN_WORDS) or _spelled_ssn(tokens, first)
        if said_ssn or _SSN_WRITTEN.fullmatch(text, run.start, run.end):
            return Entity(SSN, run.start, run.end)
    phone = _phone(text, tokens, first, run, region=region, context=context)
    if phone is not None:
        return phone
    spoken = {t.text for t in tokens[first:] if t.start < run.end}
    if len(digits) >= MIN_DIGITS and not spoken & _MAGNITUDES:
        return Entity(DIGITS, run.start, run.end)
    return None


def _spelled_ssn(tokens: list[Token], first: int) -> bool:
    """ "s s n" among the words before token ``first``."""
    words = [t.text for t in tokens[max(0, first - CONTEXT_WORDS) : first]]
    return any(words[i : i + 3] == ["s", "s", "n"] for i in range(len(words) - 2))


def _phone(
    text: str, tokens: list[Token], first: int, run: DigitRun, *, region: str, context: set[str]
) -> Entity | None:
    if not 7 <= len(run.digits) <= 15:
        return None
    start = run.start
    international = False
    if run.start > 0 and text[run.start - 1] == "+":
        start, international = run.start - 1, True
    elif first > 0 and tokens[first - 1].text == "plus":
        start, international = tokens[first - 1].start, True
    try:
        number = phonenumbers.parse(("+" if international else "") + run.digits, region)
    except NumberParseException:
        return None
    if phonenumbers.is_valid_number(number):
        is_phone = True
    else:
        possible = phonenumbers.is_possible_number_with_reason(number)
        said_id = bool(context & _ID_WORDS) and not context & {"phone", "telephone", "mobile"}
        if possible == phonenumbers.ValidationResult.IS_POSSIBLE:
            is_phone = not said_id
        elif possible == phonenumbers.ValidationResult.IS_POSSIBLE_LOCAL_ONLY:
            is_phone = bool(context & _PHONE_WORDS) and not said_id
        else:
            is_phone = False
    if not is_phone:
        return None
    if not international and start > 0 and text[start - 1] == "(":  # "(555) 123-4567"
        start -= 1
    return Entity(PHONE_NUMBER, start, run.end)


# --- IBAN ----------------------------------------------------------------------------------

# Country code, check digits, then up to 30 letters or digits in groups (written form).
_IBAN_WRITTEN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}")
_IBAN_LENGTHS = range(34, 14, -1)  # longest first: the whole number, not a valid prefix


def _ibans(text: str, tokens: list[Token], runs: list[DigitRun]) -> list[Entity]:
    found: list[Entity] = []
    for match in _IBAN_WRITTEN.finditer(text):
        # Character by character, with the offset each compact character ends at.
        chars = [(c, match.start() + i + 1) for i, c in enumerate(match.group()) if c != " "]
        end = _longest_iban(chars)
        if end is not None:
            found.append(Entity(IBAN, match.start(), end))
    found.extend(_spoken_ibans(text, tokens, runs))
    return found


def _spoken_ibans(text: str, tokens: list[Token], runs: list[DigitRun]) -> list[Entity]:
    """Spelled IBANs: single letters and digit runs ("g b eight two w e s t one two ...")."""
    run_at = {run.start: run for run in runs}
    found: list[Entity] = []
    i = 0
    while i + 2 < len(tokens):
        a, b, c = tokens[i], tokens[i + 1], tokens[i + 2]
        run = run_at.get(c.start)
        if not (_letter(a) and _letter(b) and run is not None and len(run.digits) >= 2):
            i += 1
            continue
        chars = [(a.text.upper(), a.end), (b.text.upper(), b.end)]
        j = i + 2
        while j < len(tokens):
            token = tokens[j]
            if j > i + 2 and not text[tokens[j - 1].end : token.start].isspace():
                break
            run = run_at.get(token.start)
            if run is not None:
                chars.extend((d, run.end) for d in run.digits)
                while j < len(tokens) and tokens[j].start < run.end:
                    j += 1
            elif _letter(token):
                chars.append((token.text.upper(), token.end))
                j += 1
            else:
                break
        end = _longest_iban(chars)
        if end is None:
            i += 1
            continue
        found.append(Entity(IBAN, a.start, end))
        i = bisect.bisect_left([t.start for t in tokens], end)
    return found


def _letter(token: Token) -> bool:
    return len(token.text) == 1 and token.text.isalpha()


def _longest_iban(chars: list[tuple[str, int]]) -> int | None:
    """The end offset of the longest valid IBAN at the start of ``chars`` (compact characters
    with the offset each ends at), or None."""
    compact = "".join(c for c, _ in chars)
    if len(compact) < 15 or not compact[2:4].isdigit():
        return None
    for length in _IBAN_LENGTHS:
        if length <= len(compact) and stdnum_iban.is_valid(compact[:length]):
            return chars[length - 1][1]
    return None


# --- email ---------------------------------------------------------------------------------

_EMAIL_WRITTEN = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
# Top-level domains a spoken address may end in: common generic ones and frequent countries.
# A spoken "at ... dot <word>" is only an address when the word is one of these.
_TLDS = (
    "com net org edu gov mil int io co ai app dev info biz me tv us uk ca au nz ie de fr es it "
    "nl be ch at se no dk fi pl pt br mx in jp cn ru za eu online store tech"
)
TLDS = frozenset(_TLDS.split())
_DOT_WORDS = frozenset({"dot", "period", "point"})
_LOCAL_JOIN_WORDS = frozenset({"dot", "period", "underscore", "dash", "hyphen"})
# Words that start a sentence about an address rather than belong to one ("my email is john").
_NOT_LOCAL_TEXT = """
    is it's its it my me us you your email mail address was to send at the and or that this
    be reach contact write i'm am are use on in from with
"""
_NOT_LOCAL = frozenset(_NOT_LOCAL_TEXT.split()) | _LOCAL_JOIN_WORDS
MAX_LOCAL_WORDS = 2  # plain words of one part of a spoken local part ("john smith at ...")


def _emails(text: str, tokens: list[Token]) -> list[Entity]:
    found = [Entity(EMAIL, m.start(), m.end()) for m in _EMAIL_WRITTEN.finditer(text)]
    for i, token in enumerate(tokens):
        if token.text != "at" or i == 0:
            continue
        domain_end = _spoken_domain(text, tokens, i + 1)
        local_start = _spoken_local(text, tokens, i - 1)
        if domain_end is not None and local_start is not None:
            found.append(Entity(EMAIL, tokens[local_start].start, tokens[domain_end].end))
    return found


def _spell(token: Token) -> bool:
    """A token that is part of a spelled-out name or number: a letter, a digit or a digit word."""
    return (len(token.text) == 1 and token.text.isalnum()) or (
        token.text in DIGIT_WORDS or token.text == "oh" or token.is_digits
    )


def _gap(text: str, tokens: list[Token], i: int) -> str:
    """What lies between tokens ``i`` and ``i + 1``."""
    return text[tokens[i].end : tokens[i + 1].start]


def _spoken_domain(text: str, tokens: list[Token], i: int) -> int | None:
    """The index of the last token of a domain starting at token ``i`` ("example dot com",
    "acme dash shop dot co dot uk", "example.com"), or None. It must end in a known top-level
    domain."""
    last_tld: int | None = None
    while i < len(tokens):
        end = _unit_forward(tokens, i)
        if end is None or end + 1 >= len(tokens):
            break
        gap, after = _gap(text, tokens, end), tokens[end + 1].text
        if gap in {"-", "_"}:  # "acme-shop": the name goes on
            i = end + 1
            continue
        if after in {"dash", "hyphen"} and gap.isspace():
            i = end + 2
            continue
        if gap == ".":
            i = end + 1
        elif after in _DOT_WORDS and gap.isspace():
            i = end + 2
        else:
            break
        if i < len(tokens) and tokens[i].text in TLDS:
            last_tld = i
    return last_tld


def _unit_forward(tokens: list[Token], i: int) -> int | None:
    """The last token of a name part starting at ``i``: spelled characters, or one word."""
    if _spell(tokens[i]):
        while i + 1 < len(tokens) and _spell(tokens[i + 1]):
            i += 1
        return i
    if tokens[i].text in _NOT_LOCAL:
        return None
    return i


def _spoken_local(text: str, tokens: list[Token], i: int) -> int | None:
    """The index of the first token of a local part ending at token ``i`` ("john", "j o h n
    dot doe"), or None."""
    first: int | None = None
    while i >= 0:
        start = _unit_backward(tokens, i)
        if start is None:
            break
        first = start
        if start == 0:
            break
        gap = _gap(text, tokens, start - 1)
        if gap in {".", "_", "-"}:
            i = start - 1
        elif tokens[start - 1].text in _LOCAL_JOIN_WORDS and start >= 2:
            i = start - 2
        else:
            break
    return first


def _unit_backward(tokens: list[Token], i: int) -> int | None:
    """The first token of a name part ending at ``i``: spelled characters, perhaps after a
    word or two ("john two three", "j o h n")."""
    start = i
    while start >= 0 and _spell(tokens[start]):
        start -= 1
    words = 0
    while start >= 0 and words < MAX_LOCAL_WORDS and tokens[start].text not in _NOT_LOCAL:
        if _spell(tokens[start]):
            break
        start -= 1
        words += 1
    return None if start == i else start + 1
