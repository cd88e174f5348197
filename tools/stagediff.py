"""The unified diff between two stage directories, as ``diff -ruN`` prints it."""

import difflib
import re
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


def section(text, heading):
    """The part of Markdown ``text`` under ``## heading``, up to the next ``## `` heading."""
    match = re.search(
        rf'^## {re.escape(heading)}\n(.*?)(?=^## |\Z)', text, re.MULTILINE | re.DOTALL
    )
    if not match:
        raise ValueError(f'no "## {heading}" section')
    return match[1]


def content(directory, covered):
    """What ``covered`` names in a stage: a file's bytes, a folder's files, or, for
    ``README.md#Run it``, that section of the file (empty where it is missing)."""
    directory = Path(directory)
    name, _, heading = covered.partition('#')
    path = directory / name
    if heading:
        return section(path.read_text(), heading).encode() if path.exists() else b''
    if path.is_dir():
        return {str(p): (path / p).read_bytes() for p in stage_files(path)}
    return path.read_bytes() if path.exists() else None


def same_in(old, new, covered):
    """Whether everything ``covered`` names is byte for byte the same in both stages."""
    return all(content(old, name) == content(new, name) for name in covered)


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
