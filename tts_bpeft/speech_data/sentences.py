"""A built-in list of 400 distinct plain English sentences for synthetic corpora.

Each sentence is a subject, an action and a circumstance, combined so that sentence ``i`` and ``i + 1``
differ in every part; a third of them open with the circumstance and a comma, every seventh ends with an
exclamation mark, so the phonemizer meets some punctuation. Spoken by espeak-ng or flite they last about
2.5-4 s (200-320 mel frames).
"""

from __future__ import annotations

_SUBJECTS = (
    "the old farmer",
    "a young teacher",
    "my neighbour",
    "the tired doctor",
    "her little brother",
    "the quiet student",
    "our new manager",
    "the friendly baker",
    "a careful driver",
    "the tall sailor",
    "his grandmother",
    "the busy nurse",
    "a clever painter",
    "the patient gardener",
    "their oldest daughter",
    "the cheerful postman",
    "a local musician",
    "the shy librarian",
    "my best friend",
    "the village priest",
)
_ACTIONS = (
    "carried a heavy basket",
    "painted the wooden fence",
    "found a silver coin",
    "opened the green door",
    "cooked a simple dinner",
    "cleaned the dusty window",
    "read a long letter",
    "fixed the broken chair",
    "bought fresh bread",
    "planted three small trees",
    "lost the black umbrella",
    "counted the empty boxes",
    "washed the muddy boots",
    "wrote a short poem",
    "sold the old bicycle",
    "mended the torn jacket",
    "watched the bright stars",
    "climbed the steep hill",
    "fed the hungry ducks",
    "locked the iron gate",
)
_CIRCUMSTANCES = (
    "near the river",
    "before the storm",
    "after the long meeting",
    "in the early morning",
    "at the busy market",
    "on a cold evening",
    "behind the old church",
    "during the summer holiday",
    "under the grey sky",
    "beside the narrow road",
    "late at night",
    "at the edge of the town",
    "in the warm kitchen",
    "on the first day of spring",
    "after a quiet lunch",
    "across the small bridge",
    "while the children slept",
    "in the pouring rain",
    "at the end of the week",
    "by the open window",
)

NUM_SENTENCES = len(_SUBJECTS) * len(_ACTIONS)


def sentence(index: int) -> str:
    """Sentence ``index % NUM_SENTENCES``; distinct indices below NUM_SENTENCES give distinct sentences."""
    i = index % NUM_SENTENCES
    s = i % len(_SUBJECTS)
    action = _ACTIONS[(i // len(_SUBJECTS) + s) % len(_ACTIONS)]
    circumstance = _CIRCUMSTANCES[(3 * i + i // len(_SUBJECTS)) % len(_CIRCUMSTANCES)]
    end = "!" if i % 7 == 6 else "."
    if i % 3 == 0:
        return f"{circumstance.capitalize()}, {_SUBJECTS[s]} {action}{end}"
    return f"{_SUBJECTS[s].capitalize()} {action} {circumstance}{end}"


SENTENCES: tuple[str, ...] = tuple(sentence(i) for i in range(NUM_SENTENCES))
