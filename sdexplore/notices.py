"""Third-party notices that tell a sdexplore user nothing, silenced one by one (never all warnings).

Every entry names the library's logger and the start of the one message it drops; anything else those
libraries say still gets through. Installed when this module is imported (``sdexplore`` imports it before diffusers).

- transformers, importing diffusers: "`CLIPImageProcessor` requires torchvision (not installed); falling back
  to `CLIPImageProcessorPil`". sdexplore runs no image processor (no safety checker), so torchvision, a
  large CUDA-matched package, would only silence the message.
- transformers, when diffusers' ``load_textual_inversion`` grows the text encoder's embedding table: "The new
  embeddings will be initialized from a multivariate normal distribution …". diffusers writes the loaded vector
  into the new row straight after, so the initialisation it describes never reaches a picture.
- diffusers, when ``from_pipe`` makes an SDXL img2img/inpainting sibling and casts its VAE to the dtype it
  already has: "There are modules in AutoencoderKL that should be kept in float32: []" (an empty list: no module
  is concerned; a message naming modules still gets through).
- the "Loading pipeline components" / "Loading weights" progress bars of a model that loads in a second:
  ``quiet_loading()`` turns them off around ``load_pipeline``'s loading only, and puts them back.

diffusers' "install `accelerate`" advice is followed instead: accelerate is a dependency.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager

KNOWN_NOTICES = (
    ("transformers.utils.import_utils", "requires torchvision (not installed); falling back to"),
    ("transformers.modeling_utils", "The new embeddings will be initialized from a multivariate normal distribution"),
    ("diffusers.models.modeling_utils", "that should be kept in float32: []."),
)


class _DropMessage(logging.Filter):
    """Drops records whose message contains ``fragment``; passes everything else."""

    def __init__(self, fragment: str):
        super().__init__()
        self.fragment = fragment

    def filter(self, record: logging.LogRecord) -> bool:
        return self.fragment not in record.getMessage()


def install() -> None:
    """Add one filter per known notice to its logger (idempotent)."""
    for logger_name, fragment in KNOWN_NOTICES:
        logger = logging.getLogger(logger_name)
        if not any(isinstance(f, _DropMessage) and f.fragment == fragment for f in logger.filters):
            logger.addFilter(_DropMessage(fragment))


@contextmanager
def quiet_loading():
    """No diffusers/transformers loading progress bars inside the block; their previous state after it."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    switches = [(lib, lib.is_progress_bar_enabled()) for lib in (diffusers_logging, transformers_logging)]
    for lib, _ in switches:
        lib.disable_progress_bar()
    try:
        yield
    finally:
        for lib, was_enabled in switches:
            if was_enabled:
                lib.enable_progress_bar()


install()
