"""A small procedural character world, and models trained on it, for offline runs.

With model hubs out of reach, the embedded tiny models draw meaningless pictures. This
package renders cartoon characters from attribute records (:mod:`.render`), captions them
(:mod:`.captions`), and builds models trained on those renders: an SD1.5-family pipeline
(:mod:`.base_model`), an identity embedder (:mod:`.embedder`) and an attribute oracle
(:mod:`.oracle`), so the loop's effect can be seen and measured offline.
"""

from charloop_world.attributes import (
    ALL_VALUES,
    CHARACTER_VALUES,
    CONTEXT_VALUES,
    CharacterSpec,
    Context,
    record,
    sample_character,
    sample_context,
)
from charloop_world.captions import caption
from charloop_world.render import render

__all__ = [
    "ALL_VALUES",
    "CHARACTER_VALUES",
    "CONTEXT_VALUES",
    "CharacterSpec",
    "Context",
    "caption",
    "record",
    "render",
    "sample_character",
    "sample_context",
]
