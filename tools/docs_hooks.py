"""mkdocs hook: replace ``<!-- stage-diff A B -->`` with the diff between two stages.

The diff is made from the stage directories each time the site is built, so the
"What changed" sections cannot fall behind the code.
"""

import re

from stagediff import stage_diff  # mkdocs puts this file's folder on sys.path

from stages import STAGES

MARKER = re.compile(r'^<!-- stage-diff (\S+) (\S+) -->$', re.MULTILINE)


def _diff_block(match):
    by_name = {path.name: path for path in STAGES.values()}
    for name in match.groups():
        if name not in by_name:
            raise ValueError(f'stage-diff names a missing stage directory: {name}')
    old, new = (by_name[name] for name in match.groups())
    diff = stage_diff(old, new)
    if not diff:
        return f'No file changed between `{old.name}` and `{new.name}`.'
    return f'````diff\n{diff}````'  # four backticks: the diff may hold fences of three


def on_page_markdown(markdown, page, config, files):
    return MARKER.sub(_diff_block, markdown)
