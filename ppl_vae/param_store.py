"""Pyro's global param store as this package uses it: every pair starts from an empty store, as
Pyro's examples do before SVI (stale parameters of another pair under the same names would
otherwise be trained in its place), and a user's own parameters are never dropped silently."""

from __future__ import annotations

import warnings

import pyro


class ParamStoreNote(UserWarning):
    """A Pyro param store that held parameters this package had not created was emptied."""


# names of the parameters this package registered: only other names in the store are a user's own
_OWN_PARAMS: set[str] = set()


def fresh() -> None:
    """Empty Pyro's param store, as Pyro's examples do before SVI (stale parameters of another
    pair under the same names would otherwise be trained in place of this pair's); say so when
    it held parameters that no trainer created."""
    foreign = sorted(set(pyro.get_param_store().keys()) - _OWN_PARAMS)
    if foreign:
        warnings.warn(
            f"ppl_vae starts a pair from an empty Pyro param store and dropped {len(foreign)} parameter(s) it did not create "
            f"({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}); keep them with "
            "pyro.get_param_store().get_state() before, and set_state() after, if you need them",
            ParamStoreNote,
            stacklevel=4,
        )
    pyro.clear_param_store()


def mark_own() -> None:
    """The parameters now in the store were registered by this package (a pair it built or checked)."""
    _OWN_PARAMS.update(pyro.get_param_store().keys())
