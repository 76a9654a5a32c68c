"""Particles drawn one at a time: the pairs found not to broadcast over a leading sample
dimension (networks that concatenate inputs), remembered per pair and said once."""

from __future__ import annotations

import warnings
import weakref


class SequentialParticles(UserWarning):
    """A pair that does not broadcast over a leading sample dimension: its particles run one at a time."""


_ONE_AT_A_TIME: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _owner(fn):
    return getattr(fn, "__self__", fn)  # a bound method's instance: ``obj.model`` is a new object each time


def runs_one_at_a_time(model, guide) -> bool:
    """Whether this pair was found not to broadcast over a leading sample dimension."""
    try:
        return any(_owner(fn) in _ONE_AT_A_TIME for fn in (model, guide))
    except TypeError:  # not weakly referenceable: never marked
        return False


def mark_one_at_a_time(model, guide, err: BaseException) -> None:
    for fn in (model, guide):
        try:
            _ONE_AT_A_TIME[_owner(fn)] = True
        except TypeError:
            pass
    warnings.warn(
        f"the model and guide do not broadcast over a leading sample dimension ({type(err).__name__}: "
        f"{str(err).strip().splitlines()[0] if str(err).strip() else ''}); their particles run one at a time, as "
        "Pyro's Trace_ELBO runs them: the same answers, slower. Make the networks broadcast (expand inputs before "
        "torch.cat) to vectorise them",
        SequentialParticles,
        stacklevel=3,
    )


class PerParticleTraces:
    """Stands for the traces of K particles drawn one at a time: there is no single trace of them."""

    def __getattr__(self, name):
        raise ValueError(
            "this needs the traces of all particles at once, and the model and guide run their particles one at a "
            "time (they do not broadcast over a leading sample dimension): use one particle (k=1), or make the "
            "networks broadcast (expand inputs before torch.cat)"
        )

    def copy(self):
        return self.__getattr__("copy")
