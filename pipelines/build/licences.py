"""Licence strings from annotations -> SPDX identifiers, and the policy over them.

Annotation licences are untrusted: free text, null, NaN, numbers. :func:`normalise_licence` maps
the spellings each Objaverse-XL source uses to one SPDX id, and returns None for anything it cannot
read with certainty (an unknown word makes the whole string unknown, so "CC-BY except X" is never
read as CC-BY). Spellings handled:

- Sketchfab slugs: ``by``, ``by-sa``, ``by-nd``, ``by-nc``, ``by-nc-sa``, ``by-nc-nd``, ``cc0``,
  ``st`` / ``free-st`` (Sketchfab Standard, not an open licence);
- Thingiverse names: ``Creative Commons - Attribution - Non-Commercial - Share Alike``,
  ``Creative Commons - Public Domain Dedication``, ``GNU - GPL``, ``BSD License``, ``Public Domain``,
  ``All Rights Reserved`` ...;
- GitHub licence names and keys: ``MIT License`` / ``mit``, ``Apache License 2.0`` / ``apache-2.0``,
  ``BSD 3-Clause "New" or "Revised" License``, ``Creative Commons Zero v1.0 Universal``, ``Other`` ...;
- Smithsonian: ``CC0``;
- SPDX ids in any case, and free forms such as ``CC-BY 4.0`` or ``Creative Commons Attribution``.

Creative Commons strings without a version are read as 4.0. An unversioned "BSD License" is read as
BSD-3-Clause (whoever complies with it also complies with the 2-clause text); an unversioned GPL as
GPL-1.0-or-later, which is what the GPL says a missing version number means.
"""

from __future__ import annotations

import re
from functools import lru_cache

from pydantic import BaseModel, Field, field_validator

from schemas.assets import RejectReason
from schemas.prefilter import PERMISSIVE_LICENCES

_CC_VERSIONS = ("1.0", "2.0", "2.5", "3.0", "4.0")
_CC_KINDS = ("BY", "BY-SA", "BY-ND", "BY-NC", "BY-NC-SA", "BY-NC-ND")

_OTHER_SPDX = (
    "CC0-1.0", "MIT", "MIT-0", "Apache-2.0", "Apache-1.1", "BSD-2-Clause", "BSD-3-Clause",
    "BSD-3-Clause-Clear", "BSD-4-Clause", "0BSD", "ISC", "Zlib", "Unlicense", "BSL-1.0", "MPL-2.0",
    "EPL-1.0", "EPL-2.0", "GPL-1.0-or-later", "GPL-2.0-only", "GPL-2.0-or-later", "GPL-3.0-only",
    "GPL-3.0-or-later", "LGPL-2.0-or-later", "LGPL-2.1-only", "LGPL-2.1-or-later", "LGPL-3.0-only",
    "LGPL-3.0-or-later", "AGPL-3.0-only", "AGPL-3.0-or-later", "WTFPL", "Artistic-2.0", "EUPL-1.2",
    "OFL-1.1", "NCSA", "PostgreSQL", "Vim", "OSL-3.0", "AFL-3.0", "MS-PL", "ODbL-1.0", "PDDL-1.0",
    "ODC-By-1.0", "LPPL-1.3c", "GFDL-1.3-only", "Nokia",
)

# Non-SPDX outcomes that are known (so: licence_not_allowed, not unknown_licence).
ALL_RIGHTS_RESERVED = "LicenseRef-All-Rights-Reserved"
SKETCHFAB_STANDARD = "LicenseRef-Sketchfab-Standard"
SKETCHFAB_EDITORIAL = "LicenseRef-Sketchfab-Editorial"

KNOWN_LICENCES: frozenset[str] = frozenset(
    [f"CC-{k}-{v}" for k in _CC_KINDS for v in _CC_VERSIONS]
    + list(_OTHER_SPDX)
    + [ALL_RIGHTS_RESERVED, SKETCHFAB_STANDARD, SKETCHFAB_EDITORIAL]
)
_BY_LOWER = {spdx.lower(): spdx for spdx in KNOWN_LICENCES}

# Keys are strings after _key(): lower case, runs of other characters -> one space.
_ALIASES: dict[str, str] = {
    # public domain
    "cc0": "CC0-1.0", "cc0 1.0": "CC0-1.0", "cc zero": "CC0-1.0", "public domain": "CC0-1.0",
    "creative commons zero v1.0 universal": "CC0-1.0", "cc0 1.0 universal": "CC0-1.0",
    "creative commons public domain dedication": "CC0-1.0", "public domain dedication": "CC0-1.0",
    "creative commons cc0": "CC0-1.0", "creative commons zero": "CC0-1.0",
    # MIT, Apache, BSD family
    "mit": "MIT", "mit license": "MIT", "the mit license": "MIT", "expat": "MIT", "mit no attribution": "MIT-0",
    "apache": "Apache-2.0", "apache 2": "Apache-2.0", "apache 2.0": "Apache-2.0", "apache2": "Apache-2.0",
    "apache license 2.0": "Apache-2.0", "apache license version 2.0": "Apache-2.0",
    "apache 2.0 license": "Apache-2.0", "apache software license 2.0": "Apache-2.0",
    "bsd": "BSD-3-Clause", "bsd license": "BSD-3-Clause",
    "bsd 2 clause": "BSD-2-Clause", "bsd 2 clause simplified license": "BSD-2-Clause",
    "simplified bsd": "BSD-2-Clause", "freebsd": "BSD-2-Clause",
    "bsd 3 clause": "BSD-3-Clause", "bsd 3 clause new or revised license": "BSD-3-Clause",
    "new bsd": "BSD-3-Clause", "revised bsd": "BSD-3-Clause", "modified bsd": "BSD-3-Clause",
    "bsd 3 clause clear license": "BSD-3-Clause-Clear",
    "bsd 4 clause": "BSD-4-Clause", "bsd 4 clause original or old license": "BSD-4-Clause",
    "bsd zero clause license": "0BSD",
    "isc license": "ISC", "zlib license": "Zlib", "the unlicense": "Unlicense",
    "boost software license 1.0": "BSL-1.0", "mozilla public license 2.0": "MPL-2.0",
    "eclipse public license 1.0": "EPL-1.0", "eclipse public license 2.0": "EPL-2.0",
    # copyleft
    "gpl": "GPL-1.0-or-later", "gnu gpl": "GPL-1.0-or-later", "gnu general public license": "GPL-1.0-or-later",
    "creative commons gnu gpl": "GPL-2.0-only",
    "gpl 2.0": "GPL-2.0-only", "gpl 3.0": "GPL-3.0-only", "gplv2": "GPL-2.0-only", "gplv3": "GPL-3.0-only",
    "gnu general public license v2.0": "GPL-2.0-only", "gnu general public license v3.0": "GPL-3.0-only",
    "lgpl": "LGPL-2.0-or-later", "gnu lgpl": "LGPL-2.0-or-later",
    "lgpl 2.1": "LGPL-2.1-only", "lgpl 3.0": "LGPL-3.0-only",
    "gnu lesser general public license v2.1": "LGPL-2.1-only",
    "gnu lesser general public license v3.0": "LGPL-3.0-only",
    "agpl 3.0": "AGPL-3.0-only", "gnu affero general public license v3.0": "AGPL-3.0-only",
    # other named licences GitHub reports
    "do what the f ck you want to public license": "WTFPL", "artistic license 2.0": "Artistic-2.0",
    "european union public license 1.2": "EUPL-1.2", "sil open font license 1.1": "OFL-1.1",
    "university of illinois ncsa open source license": "NCSA", "postgresql license": "PostgreSQL",
    "vim license": "Vim", "open software license 3.0": "OSL-3.0", "academic free license v3.0": "AFL-3.0",
    "microsoft public license": "MS-PL", "odc open database license v1.0": "ODbL-1.0",
    "latex project public license v1.3c": "LPPL-1.3c", "gnu free documentation license v1.3": "GFDL-1.3-only",
    "nokia open source license": "Nokia",
    # known, not open
    "all rights reserved": ALL_RIGHTS_RESERVED, "arr": ALL_RIGHTS_RESERVED,
    "st": SKETCHFAB_STANDARD, "free st": SKETCHFAB_STANDARD, "standard": SKETCHFAB_STANDARD,
    "free standard": SKETCHFAB_STANDARD, "sketchfab standard": SKETCHFAB_STANDARD,
    "ed": SKETCHFAB_EDITORIAL, "editorial": SKETCHFAB_EDITORIAL,
}

# Words a Creative Commons string may contain; any other word makes it unreadable.
_CC_FILLER = {"creative", "commons", "cc", "license", "licence", "international", "unported", "generic", "ported"}
_CC_VERSION_WORDS = {"1": "1.0", "1.0": "1.0", "2": "2.0", "2.0": "2.0", "2.5": "2.5", "3": "3.0", "3.0": "3.0", "4": "4.0", "4.0": "4.0"}
_CC_ELEMENT_WORDS = {
    "by": "BY", "attribution": "BY",
    "nc": "NC", "noncommercial": "NC", "non commercial": "NC",
    "nd": "ND", "noderivatives": "ND", "noderivs": "ND", "no derivatives": "ND", "no derivs": "ND",
    "sa": "SA", "sharealike": "SA", "share alike": "SA",
}
_MAX_LEN = 200


def _key(raw: str) -> str:
    return re.sub(r"[^a-z0-9.]+", " ", raw.lower()).strip(" .")


def _creative_commons(key: str) -> str | None:
    """Read a CC licence from its words: every word must be a CC word, BY must be present."""
    text = f" {key} "
    for phrase in ("non commercial", "no derivatives", "no derivs", "share alike"):
        text = text.replace(f" {phrase} ", f" {phrase.replace(' ', '')} ")
    words = text.split()
    is_cc_text = "cc" in words or ("creative" in words and "commons" in words)
    is_slug = bool(words) and words[0] in ("by", "attribution")  # "by-nc-sa", "Attribution 4.0"
    if not (is_cc_text or is_slug):
        return None
    elements: set[str] = set()
    versions: set[str] = set()
    for word in words:
        word = word.removeprefix("v") if re.fullmatch(r"v[0-9.]+", word) else word
        if word in _CC_ELEMENT_WORDS:
            elements.add(_CC_ELEMENT_WORDS[word])
        elif word in _CC_VERSION_WORDS:
            versions.add(_CC_VERSION_WORDS[word])
        elif word not in _CC_FILLER:
            return None
    if "BY" not in elements or {"ND", "SA"} <= elements or len(versions) > 1:
        return None
    kind = "-".join(e for e in ("BY", "NC", "ND", "SA") if e in elements)
    return f"CC-{kind}-{versions.pop() if versions else '4.0'}"


def normalise_licence(raw: object) -> str | None:
    """The SPDX id (or a known ``LicenseRef-``) for a licence string, None when unreadable."""
    if not isinstance(raw, str) or len(raw) > _MAX_LEN:
        return None
    return _normalise_text(raw)


@lru_cache(maxsize=4096)  # a few hundred distinct spellings cover millions of annotation rows
def _normalise_text(raw: str) -> str | None:
    exact = _BY_LOWER.get(raw.strip().lower())
    if exact is not None:
        return exact
    key = _key(raw)
    if not key:
        return None
    if key in _ALIASES:
        return _ALIASES[key]
    spdx_like = _BY_LOWER.get(key.replace(" ", "-"))  # "cc by 4.0" -> "cc-by-4.0"
    return spdx_like if spdx_like is not None else _creative_commons(key)


class LicencePolicy(BaseModel):
    """An allow-list of SPDX ids; everything else is refused with a reason code."""

    allow: frozenset[str] = Field(default=PERMISSIVE_LICENCES)

    @field_validator("allow")
    @classmethod
    def _known(cls, value: frozenset[str]) -> frozenset[str]:
        unknown = sorted(v for v in value if v not in KNOWN_LICENCES and not v.startswith("LicenseRef-"))
        if unknown:
            raise ValueError(f"not SPDX ids this project knows: {unknown}")
        return value

    def check(self, raw: object) -> tuple[str | None, RejectReason | None]:
        """(SPDX id or None, None when allowed else the reason)."""
        spdx = normalise_licence(raw)
        if spdx is None:
            return None, RejectReason.unknown_licence
        if spdx not in self.allow:
            return spdx, RejectReason.licence_not_allowed
        return spdx, None
