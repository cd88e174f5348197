"""mkdocs hooks: three short forms the pages use, made into Markdown when the site is built.

``{{ repo_url }}``
    The repository's address, from ``repo_url`` in mkdocs.yml (the one place it is written).

A fenced block holding one line ``--8<-- "NN-stage/path" from "START" to "END"``
    The lines of a stage file from the first line containing START through the first line
    after it containing END. Without ``to``, the lines from START to the end of the block
    that starts there (the lines indented deeper); the decorators above START come too.
    Without ``from``, the whole file. The block gets the file's name as its title, its real
    line numbers, and highlights on the lines that are new since the previous stage. The
    lines themselves are still included by pymdownx.snippets, as ``path:first:last``.

``<!-- stage-diff A B -->``
    The diff of the code (``.py`` and ``.html`` files) between two stage directories,
    collapsed and kept out of the search index; other changed files are listed by name.
"""

import difflib
import re

from stagediff import stage_diff  # mkdocs puts this file's folder on sys.path

from stages import ROOT, STAGES

DIFF_MARKER = re.compile(r'^<!-- stage-diff (\S+) (\S+) -->$', re.MULTILINE)
INCLUDE = re.compile(
    r'^(?P<fence>`{3,})(?P<language>\S+)(?P<options>[^\n]*)\n'
    r'--8<-- "(?P<path>[^"]+)"(?: from "(?P<start>[^"]+)")?(?: to "(?P<end>[^"]+)")?\n'
    r'(?P=fence)$',
    re.MULTILINE,
)
# What a stage diff in the docs shows: the code and the server and CI files a part
# teaches; not the prose (READMEs) or the pins (requirements, environment.yml).
NOT_CODE = ('.md', 'environment.yml', 'requirements.txt', 'requirements-dev.txt')


def is_code(path):
    return not path.endswith(NOT_CODE)


def stage_of(relative):
    """The stage directory of a path such as ``02-database-config/app/models.py``."""
    name = relative.split('/')[0]
    by_name = {path.name: path for path in STAGES.values()}
    if name not in by_name:
        raise ValueError(f'{relative}: no stage directory {name}')
    return by_name[name]


def indent(line):
    return len(line) - len(line.lstrip())


def decorated(lines, first):
    """``first``, or the line of the first decorator above it (a decorator may span lines)."""
    top = first
    while True:
        i = top - 1
        while (
            i > 0
            and lines[i].strip()
            and (indent(lines[i]) > indent(lines[first]) or lines[i].strip() in (')', ']'))
        ):
            i -= 1  # inside a decorator written over several lines
        if i < 0 or not lines[i].lstrip().startswith('@'):
            return top
        top = i


def line_range(lines, start=None, end=None):
    """The first and last line numbers (from 1) that ``start`` and ``end`` select."""
    if start is None:
        return 1, len(lines)
    first = next((i for i, line in enumerate(lines) if start in line), None)
    if first is None:
        raise ValueError(f'no line contains {start!r}')
    if end is not None:
        last = next((i for i in range(first, len(lines)) if end in lines[i]), None)
        if last is None:
            raise ValueError(f'no line after {start!r} contains {end!r}')
        return decorated(lines, first) + 1, last + 1
    last = first
    while lines[last].lstrip().startswith('@'):  # a decorator: go on to its function
        last += 1
    for i in range(last + 1, len(lines)):
        if lines[i].strip() and indent(lines[i]) <= indent(lines[first]):
            break
        if lines[i].strip():
            last = i
    return decorated(lines, first) + 1, last + 1


def new_lines(relative):
    """The line numbers (from 1) of the file that the previous stage did not have."""
    stage = stage_of(relative)
    numbers = list(STAGES.values())
    previous = numbers[numbers.index(stage) - 1] if numbers.index(stage) else None
    path = ROOT / 'stages' / relative
    before = previous / relative.split('/', 1)[1] if previous else None
    if before is None or not before.exists():
        return set()  # a new file: every line is new, so none stands out
    old, new = before.read_text().splitlines(), path.read_text().splitlines()
    matcher = difflib.SequenceMatcher(a=old, b=new, autojunk=False)
    return {
        j + 1
        for tag, _, _, j1, j2 in matcher.get_opcodes()
        if tag in ('insert', 'replace')
        for j in range(j1, j2)
    }


def _include(match):
    relative = match['path']
    path = ROOT / 'stages' / relative
    if not path.is_file():
        raise ValueError(f'no stage file {relative}')
    try:
        first, last = line_range(path.read_text().splitlines(), match['start'], match['end'])
    except ValueError as error:
        raise ValueError(f'{relative}: {error}') from None
    highlight = sorted(n - first + 1 for n in new_lines(relative) if first <= n <= last)
    options = f' title="stages/{relative}" linenums="{first}"'
    if highlight:
        options += f' hl_lines="{" ".join(map(str, highlight))}"'
    fence = match['fence']
    return (
        f'{fence}{match["language"]}{options}{match["options"]}\n'
        f'--8<-- "{relative}:{first}:{last}"\n{fence}'
    )


def split_diff(diff):
    """``diff`` (of stage_diff) as (path inside the stage, the file's hunks) pairs."""
    files = re.split(r'^--- (\S+)\n\+\+\+ (\S+)\n', diff, flags=re.MULTILINE)
    pairs = []
    for old, new, hunks in zip(files[1::3], files[2::3], files[3::3], strict=True):
        name = new if new != '/dev/null' else old
        pairs.append((name.split('/', 1)[1], hunks))
    return pairs


def _diff_block(match):
    old, new = (stage_of(name) for name in match.groups())
    files = split_diff(stage_diff(old, new))
    code = [(path, hunks) for path, hunks in files if is_code(path)]
    other = [path for path, _ in files if not is_code(path)]
    if not code:
        raise ValueError(f'no code changed between {old.name} and {new.name}: drop the marker')
    summary = f'The code that changed from <code>{old.name}</code> to <code>{new.name}</code>'
    parts = [
        '<details class="stage-diff" data-search-exclude="" markdown="1">',
        f'<summary>{summary}: {len(code)} files (click to open)</summary>',
        '',
    ]
    for path, hunks in code:
        parts.append(f'````diff title="{path}"\n{hunks}````\n')
    if other:
        listed = ', '.join(f'`{path}`' for path in other)
        parts.append(f'Other files that changed, not shown here: {listed}.\n')
    parts.append('</details>')
    return '\n'.join(parts)


def on_page_markdown(markdown, page, config, files):
    if '{{ repo_url }}' in markdown and not config.get('repo_url'):
        raise ValueError(f'{page.file.src_path} uses {{{{ repo_url }}}}; set repo_url')
    markdown = markdown.replace('{{ repo_url }}', config.get('repo_url') or '')
    markdown = INCLUDE.sub(_include, markdown)
    return DIFF_MARKER.sub(_diff_block, markdown)
