"""Log lines that say which process did what."""

from __future__ import annotations

import logging


def setup_logging(level: str, process: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format=f"%(asctime)s %(levelname)s [{process}] %(name)s: %(message)s",
        force=True,
    )
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # pydicom logs every decoder plugin's failure with its traceback at ERROR, then raises one
    # error that names them all, which the caller logs once with the object it was
    logging.getLogger("pydicom.pixels.decoders.base").setLevel(logging.CRITICAL)
