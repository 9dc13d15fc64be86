# -*- coding: utf-8 -*-

# Copyright (c) ec2spot.pool maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Every module's documentation renders through ansible-doc, with examples and fully described return values.

ansible-doc runs exactly as a user runs it from this clone: the .venv's ansible-doc with the repository's
ansible.cfg, which finds the collection through the build/collections link that `make setup` creates.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ANSIBLE_DOC = Path(sys.executable).parent / 'ansible-doc'
COLLECTION = 'ec2spot.pool'
# A sentinel instead of an empty parameter list: pytest would report an empty list as a skip, and a
# collection without modules must fail this test, not pass it by having nothing to check.
NO_MODULE = 'no-module-found-in-plugins-modules'
MODULES = sorted(p.stem for p in (REPO / 'plugins' / 'modules').glob('*.py') if p.name != '__init__.py') or [NO_MODULE]


def run_ansible_doc(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / 'ansible.cfg'), ANSIBLE_NOCOLOR='1')
    env.pop('ANSIBLE_COLLECTIONS_PATH', None)  # the collection must be found through ansible.cfg
    return subprocess.run(
        [str(ANSIBLE_DOC), '-t', 'module', *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False,
    )


def fqcn(module: str) -> str:
    return f'{COLLECTION}.{module}'


@pytest.fixture(scope='module')
def json_docs() -> dict:
    """The --json documentation of every module, from one ansible-doc run (about 1 s per run)."""
    assert NO_MODULE not in MODULES, 'plugins/modules holds no module: there is nothing to document'
    completed = run_ansible_doc('--json', *map(fqcn, MODULES))
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout)


@pytest.fixture(scope='module')
def text_docs() -> dict:
    """The text rendering of every module, split per module (the form `ansible-doc MODULE` shows users)."""
    assert NO_MODULE not in MODULES, 'plugins/modules holds no module: there is nothing to document'
    completed = run_ansible_doc(*map(fqcn, MODULES))
    assert completed.returncode == 0, completed.stderr
    problems = [line for line in completed.stderr.splitlines() if '[ERROR]' in line or '[WARNING]' in line]
    assert not problems, '\n'.join(problems)
    rendered: dict[str, list[str]] = {}
    current = None
    for line in completed.stdout.splitlines():
        if line.startswith('> MODULE '):
            current = line.split()[2]
            rendered[current] = []
        if current is not None:
            rendered[current].append(line)
    return {name: '\n'.join(lines) for name, lines in rendered.items()}


def undocumented_return_fields(returns: dict, prefix: str = '') -> list[str]:
    """Names (dotted) of return keys, at any depth, that lack `returned` or `sample`."""
    missing = []
    for key, spec in returns.items():
        name = prefix + key
        for field in ('description', 'returned', 'sample'):
            if field not in spec:
                missing.append(f'{name}: no {field}')
        missing += undocumented_return_fields(spec.get('contains') or {}, name + '.')
    return missing


@pytest.mark.parametrize('module', MODULES)
def test_documentation_is_complete(module, json_docs):
    assert fqcn(module) in json_docs, f'ansible-doc did not return documentation for {fqcn(module)}'
    doc = json_docs[fqcn(module)]['doc']
    assert doc['module'] == module
    assert doc.get('short_description'), 'no short_description'
    assert doc.get('description'), 'no description'
    assert doc.get('author'), 'no author'
    for option, spec in doc.get('options', {}).items():
        assert spec.get('description'), f'option {option} has no description'
    # The contract: every module supports check mode; the shared attributes fragment says how far.
    attributes = doc.get('attributes', {})
    for attribute in ('check_mode', 'diff_mode', 'idempotent'):
        assert attribute in attributes, f'attribute {attribute} missing: extend ec2spot.pool.attributes'
        assert attributes[attribute].get('support'), f'attribute {attribute} states no support level'
    assert attributes['check_mode']['support'] in ('full', 'partial'), 'design: all modules support check mode'


@pytest.mark.parametrize('module', MODULES)
def test_examples_are_tasks_using_the_module(module, json_docs):
    examples = json_docs[fqcn(module)]['examples']
    assert examples and examples.strip(), 'no EXAMPLES'
    tasks = yaml.safe_load(examples)
    assert isinstance(tasks, list) and tasks, 'EXAMPLES must be a YAML list of tasks'
    assert all(isinstance(task, dict) and task.get('name') for task in tasks), 'every example task needs a name'
    using_module = [task for task in tasks if fqcn(module) in task]
    assert using_module, f'no example calls the module by its FQCN {fqcn(module)}'


@pytest.mark.parametrize('module', MODULES)
def test_return_values_have_returned_and_sample(module, json_docs):
    returns = json_docs[fqcn(module)]['return']
    assert returns, 'no RETURN'
    missing = undocumented_return_fields(returns)
    assert not missing, 'RETURN keys lacking fields:\n' + '\n'.join(missing)


@pytest.mark.parametrize('module', MODULES)
def test_text_rendering_has_every_section(module, text_docs):
    assert fqcn(module) in text_docs, f'ansible-doc rendered no text for {fqcn(module)}'
    rendered = text_docs[fqcn(module)]
    for heading in ('OPTIONS', 'ATTRIBUTES:', 'AUTHOR:', 'EXAMPLES:', 'RETURN VALUES:'):
        assert f'\n{heading}' in rendered, f'{heading} section missing from the rendered documentation'
