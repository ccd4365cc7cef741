"""Licence normalisation over the spellings Objaverse-XL's sources use, and the allow-list policy."""

from __future__ import annotations

import pytest

from pipelines.build.licences import _ALIASES, KNOWN_LICENCES, LicencePolicy, normalise_licence
from schemas.assets import RejectReason
from schemas.prefilter import PERMISSIVE_LICENCES

SPELLINGS = {
    # Sketchfab slugs
    "by": "CC-BY-4.0", "by-sa": "CC-BY-SA-4.0", "by-nd": "CC-BY-ND-4.0", "by-nc": "CC-BY-NC-4.0",
    "by-nc-sa": "CC-BY-NC-SA-4.0", "by-nc-nd": "CC-BY-NC-ND-4.0", "cc0": "CC0-1.0",
    "free-st": "LicenseRef-Sketchfab-Standard", "st": "LicenseRef-Sketchfab-Standard",
    # Thingiverse names
    "Creative Commons - Attribution": "CC-BY-4.0",
    "Creative Commons - Attribution - Share Alike": "CC-BY-SA-4.0",
    "Creative Commons - Attribution - No Derivatives": "CC-BY-ND-4.0",
    "Creative Commons - Attribution - Non-Commercial": "CC-BY-NC-4.0",
    "Creative Commons - Attribution - Non-Commercial - Share Alike": "CC-BY-NC-SA-4.0",
    "Creative Commons - Attribution - Non-Commercial - No Derivatives": "CC-BY-NC-ND-4.0",
    "Creative Commons - Public Domain Dedication": "CC0-1.0",
    "Creative Commons - GNU GPL": "GPL-2.0-only",
    "GNU - GPL": "GPL-1.0-or-later", "GNU - LGPL": "LGPL-2.0-or-later",
    "BSD License": "BSD-3-Clause", "Public Domain": "CC0-1.0",
    "All Rights Reserved": "LicenseRef-All-Rights-Reserved",
    # GitHub names and keys
    "MIT License": "MIT", "mit": "MIT", "Apache License 2.0": "Apache-2.0", "apache-2.0": "Apache-2.0",
    'BSD 3-Clause "New" or "Revised" License': "BSD-3-Clause", 'BSD 2-Clause "Simplified" License': "BSD-2-Clause",
    "Creative Commons Zero v1.0 Universal": "CC0-1.0", "cc0-1.0": "CC0-1.0",
    "Creative Commons Attribution 4.0 International": "CC-BY-4.0",
    "Creative Commons Attribution Share Alike 4.0 International": "CC-BY-SA-4.0",
    "GNU General Public License v3.0": "GPL-3.0-only", "The Unlicense": "Unlicense",
    # Smithsonian, SPDX ids, free forms
    "CC0": "CC0-1.0", "CC0 1.0": "CC0-1.0", "public domain": "CC0-1.0", "MIT": "MIT", "Apache 2.0": "Apache-2.0",
    "CC-BY 4.0": "CC-BY-4.0", "CC BY 3.0": "CC-BY-3.0", "cc-by-sa-2.5": "CC-BY-SA-2.5", "CC-BY-NC-4.0": "CC-BY-NC-4.0",
    "Creative Commons Attribution": "CC-BY-4.0", "Attribution-NonCommercial 4.0 International": "CC-BY-NC-4.0",
    "Attribution 4.0 International (CC BY 4.0)": "CC-BY-4.0", "  by  ": "CC-BY-4.0", "BY-NC-SA": "CC-BY-NC-SA-4.0",
}


@pytest.mark.parametrize(("raw", "spdx"), SPELLINGS.items())
def test_real_spellings_normalise_to_one_spdx_id(raw, spdx):
    assert normalise_licence(raw) == spdx


@pytest.mark.parametrize(
    "raw",
    [None, float("nan"), 4.0, "", "   ", "Other", "NOASSERTION", "unknown", "CC-BY except commercial use",
     "by-nd-sa", "cc by 3.0 4.0", "Made by John", "x" * 5000, "CC-BY-4.0\x00; DROP TABLE", "by-nc-sa-9.0"],
)
def test_unreadable_licences_are_unknown(raw):
    assert normalise_licence(raw) is None


def test_every_outcome_is_a_known_id():
    assert set(_ALIASES.values()) <= KNOWN_LICENCES
    assert set(SPELLINGS.values()) <= KNOWN_LICENCES
    assert PERMISSIVE_LICENCES <= KNOWN_LICENCES


def test_default_policy_allows_permissive_and_refuses_the_rest():
    policy = LicencePolicy()
    assert policy.check("by") == ("CC-BY-4.0", None)
    assert policy.check("Creative Commons Zero v1.0 Universal") == ("CC0-1.0", None)
    assert policy.check("by-nc") == ("CC-BY-NC-4.0", RejectReason.licence_not_allowed)
    assert policy.check("by-sa") == ("CC-BY-SA-4.0", RejectReason.licence_not_allowed)
    assert policy.check("free-st") == ("LicenseRef-Sketchfab-Standard", RejectReason.licence_not_allowed)
    assert policy.check(None) == (None, RejectReason.unknown_licence)
    assert policy.check("Other") == (None, RejectReason.unknown_licence)


def test_custom_allow_list_is_honoured_and_typos_are_refused():
    policy = LicencePolicy(allow={"CC-BY-SA-4.0"})
    assert policy.check("by-sa") == ("CC-BY-SA-4.0", None)
    assert policy.check("by") == ("CC-BY-4.0", RejectReason.licence_not_allowed)
    with pytest.raises(ValueError, match="CC-BY4.0"):
        LicencePolicy(allow={"CC-BY4.0"})
