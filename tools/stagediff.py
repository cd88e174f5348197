"""The unified diff between two stage directories, as ``diff -ruN`` prints it."""

import difflib
from pathlib import Path

IGNORED = {'__pycache__', '.venv', '.pytest_cache', '.ruff_cache', '.env', 'site'}


def stage_files(directory):
    """The stage's files, as paths relative to ``directory``, sorted."""
    directory = Path(directory)
    return sorted(
        path.relative_to(directory)
        for path in directory.rglob('*')
        if path.is_file() and not IGNORED & set(path.relative_to(directory).parts)
    )


def changed_files(old, new):
    """The files (relative paths, as strings) added, removed or changed from ``old`` to ``new``."""
    old, new = Path(old), Path(new)
    return {
        str(path)
        for path in set(stage_files(old)) | set(stage_files(new))
        if not (old / path).exists()
        or not (new / path).exists()
        or (old / path).read_bytes() != (new / path).read_bytes()
    }


def stage_diff(old, new):
    """What changed from stage directory ``old`` to ``new``, as one unified diff."""
    old, new = Path(old), Path(new)
    chunks = []
    for relative in sorted(set(stage_files(old)) | set(stage_files(new))):
        before, after = old / relative, new / relative
        old_lines = before.read_text().splitlines(keepends=True) if before.exists() else []
        new_lines = after.read_text().splitlines(keepends=True) if after.exists() else []
        chunks.extend(
            difflib.unified_diff(
                old_lines,
                new_lines,
                f'{old.name}/{relative}' if before.exists() else '/dev/null',
                f'{new.name}/{relative}' if after.exists() else '/dev/null',
            )
        )
    return ''.join(line if line.endswith('\n') else line + '\n' for line in chunks)
