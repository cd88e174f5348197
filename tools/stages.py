"""The one list of stages: every directory under ``stages/``, by number."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# '01' -> ROOT/stages/01-hello-world, '02' -> ..., in order.
STAGES = {path.name[:2]: path for path in sorted((ROOT / 'stages').iterdir()) if path.is_dir()}
