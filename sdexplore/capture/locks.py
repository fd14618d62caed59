"""One lock per pipeline, so that traces of the same pipeline from several threads take turns.

A traced run installs hooks on the UNet and wraps the scheduler's ``step``; two runs at once on
one pipeline would record each other's steps and could restore each other's hooks in the wrong
order. ``pipeline_lock(pipe)`` is the lock of the denoiser (UNet or transformer) the pipeline runs, shared by its
img2img/inpainting siblings (``as_img2img`` shares the components). It is re-entrant, so a
``trace()`` inside the same thread's ``tracing()`` block does not wait for itself.
"""

from __future__ import annotations

import threading
import weakref

_LOCKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_GUARD = threading.Lock()


def pipeline_lock(pipe) -> threading.RLock:
    """The re-entrant lock that serialises traced runs of ``pipe`` (keyed by its UNet or transformer)."""
    from .families import denoiser_of

    denoiser = denoiser_of(pipe)
    with _GUARD:
        lock = _LOCKS.get(denoiser)
        if lock is None:
            lock = _LOCKS[denoiser] = threading.RLock()
        return lock
