"""Where the shared folder is: beside the checkout (../shared, as CI clones it), else /work/shared."""

from pathlib import Path

_BESIDE = Path(__file__).resolve().parents[2] / "shared"
SHARED = _BESIDE if _BESIDE.is_dir() else Path("/work/shared")
CORPUS = SHARED / "corpus"
