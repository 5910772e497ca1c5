"""Redaction mode (``CS_REDACT=1``): what of each event may go to ``cs:insights``.

Every worker's events reach ``cs:insights`` through one path (the runtime's event port), which
asks :func:`insights_view`: final transcripts go there redacted (each finding of
:func:`~callstream.workers.nlp.pii.find_pii` replaced by ``[TYPE]``, in the text and in the
words it spans); partial transcripts and DTMF events not at all (the gateway holds DTMF back
too: keys pressed may be a card number or a PIN). The call's own events stream keeps the
originals; it expires with the call (``CS_CALL_TTL_S``). docs/nlp.md says what this
guarantees and what it does not.
"""

from __future__ import annotations

from typing import Any

from callstream.shared.catalogue import TRANSCRIPT
from callstream.shared.events import DTMF, Event
from callstream.workers.nlp.pii import Entity, find_pii, redact


def insights_view(event: Event) -> Event | None:
    """``event`` as ``cs:insights`` may carry it (None: not there at all)."""
    if event.type == DTMF:
        return None
    if event.type != TRANSCRIPT:
        return event
    if event.data.get("resultStatus") != "Final":
        # A partial may hold the first digits of a number still too short to be known as one
        # (four digits of a card): partials stay on the call's stream.
        return None
    text = event.data.get("text")
    if not isinstance(text, str):
        return event
    entities = find_pii(text)
    data: dict[str, Any] = dict(event.data)
    data["text"] = redact(text, entities) if entities else text
    words = data.get("words")
    if entities and isinstance(words, list):
        data["words"] = _redact_words(text, words, entities)
    data["redacted"] = True
    return Event(event.id, event.call_id, event.type, event.time_ms, data)


def _redact_words(text: str, words: list[Any], entities: list[Entity]) -> list[Any]:
    """The transcript's words, those within a finding replaced by its ``[TYPE]`` (each word is
    looked for in ``text`` after the previous one; one that is not found is dropped, so no
    word of a finding can slip through)."""
    out: list[Any] = []
    at = 0
    for word in words:
        if not isinstance(word, dict) or not isinstance(word.get("text"), str):
            continue
        found = text.find(word["text"], at)
        if found < 0:
            continue
        end = found + len(word["text"])
        at = end
        hit = next((e for e in entities if e.start < end and found < e.end), None)
        out.append({**word, "text": f"[{hit.type.upper()}]"} if hit else word)
    return out
