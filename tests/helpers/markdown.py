"""The fenced blocks of the Markdown files: READMEs and the docs' pages."""

import re
from pathlib import Path

from tools.stagediff import section

# A fenced block, also one indented in a list, a content tab or an admonition.
FENCE = re.compile(
    r'^(?P<indent> *)(?P<fence>`{3,})(?P<language>\S*)[^\n]*\n(?P<body>.*?)^(?P=indent)(?P=fence)$',
    re.MULTILINE | re.DOTALL,
)
PROMPTS = {'console': '$ ', 'ps1con': 'PS> '}


def fenced_blocks_of(text):
    """The fenced blocks of Markdown ``text``: (language, body) pairs, bodies dedented."""
    return [
        (match['language'], re.sub(f'^{match["indent"]}', '', match['body'], flags=re.MULTILINE))
        for match in FENCE.finditer(text)
    ]


def fenced_blocks(path, language=None):
    """The fenced blocks of the Markdown file ``path`` (in ``language`` alone, if given)."""
    blocks = fenced_blocks_of(Path(path).read_text())
    return [block for block in blocks if language in (None, block[0])]


def readme_blocks(stage_dir, language, heading=None):
    """The bodies of the stage README's blocks in ``language`` (under ``## heading``
    alone, if given)."""
    text = (Path(stage_dir) / 'README.md').read_text()
    if heading:
        text = section(text, heading)
    return [body for found, body in fenced_blocks_of(text) if found == language]


def readme_commands(stage_dir, heading=None):
    """Every line of the ```console blocks in the stage's README (under ``## heading``)."""
    blocks = readme_blocks(stage_dir, 'console', heading)
    return [line for block in blocks for line in block.splitlines() if line.strip()]


def commands(language, body):
    """The commands of a session block, without their prompt; output lines are left out."""
    prompt = PROMPTS[language]
    return [line[len(prompt) :] for line in body.splitlines() if line.startswith(prompt)]


def tab_sets(page):
    """The content tab sets of a page: one {label: [(language, body), ...]} dict per set."""
    sets, current, label = [], None, None
    for line in page.read_text().splitlines():
        tab = re.fullmatch(r'=== "([^"]+)"', line)
        if tab:
            if current is None:
                current = {}
                sets.append(current)
            label = tab[1]
            current[label] = []
        elif current is not None and (line.startswith('    ') or not line.strip()):
            current[label].append(line[4:])
        else:
            current = None
    return [
        {label: fenced_blocks_of('\n'.join(body) + '\n') for label, body in found.items()}
        for found in sets
    ]
