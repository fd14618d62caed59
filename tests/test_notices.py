"""Known third-party notices are silenced one by one; everything else the libraries say still gets through."""

import logging
import subprocess
import sys

import sdexplore  # noqa: F401  (installs the filters)
from sdexplore.notices import KNOWN_NOTICES


def test_loading_the_toy_model_prints_nothing(tmp_path):
    done = subprocess.run([sys.executable, "-c", "import sdexplore; sdexplore.load_pipeline('toy')"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0
    assert done.stderr == "" and done.stdout == ""


def test_only_the_known_message_is_dropped(caplog):
    logger_name, fragment = KNOWN_NOTICES[0]
    logger = logging.getLogger(logger_name)
    with caplog.at_level(logging.WARNING, logger=logger_name):
        logger.warning(f"`CLIPImageProcessor` {fragment} `CLIPImageProcessorPil`")
        logger.warning("something else worth reading")
    assert [r.getMessage() for r in caplog.records] == ["something else worth reading"]


def test_loading_leaves_the_libraries_progress_bars_as_they_were():
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.enable_progress_bar()
    transformers_logging.disable_progress_bar()
    try:
        sdexplore.load_pipeline("tiny")
        assert diffusers_logging.is_progress_bar_enabled() and not transformers_logging.is_progress_bar_enabled()
    finally:
        transformers_logging.enable_progress_bar()
