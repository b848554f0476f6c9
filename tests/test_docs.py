"""The documentation cannot drift from the programs: every command in a shell block of README.md and docs/*.md
names a script that exists (from the directory the block stands in: the repository root, or where a ``cd`` in
the block went) and flags its argument parser accepts. Nothing is run: the program's own parser reads the
arguments and the test stops it there. Python blocks must at least compile.
"""
import argparse
import glob
import os
import re
import runpy
import shlex
import sys

import pytest

from tests.conftest import REPO

DOCS = [os.path.join(REPO, "README.md")] + sorted(glob.glob(os.path.join(REPO, "docs", "*.md")))
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
# Scripts that take no arguments (they set up, test or check the environment).
NO_PARSER = {"scripts/setup.sh", "scripts/test.sh", "scripts/gpu_check.sh"}
# The shell scripts in front of Python programs: the program whose parser reads their arguments.
PROGRAMS = {"cv/detection/ssd300_vgg16/train.sh": "cv.detection.ssd300_vgg16.train",
            "cv/detection/ssd300_vgg16/infer.sh": "cv.detection.ssd300_vgg16.infer"}


class Parsed(Exception):
    """Raised by the patched parser once it has accepted the arguments."""


def blocks():
    for path in DOCS:
        with open(path) as f:
            text = f.read()
        for match in FENCE.finditer(text):
            line = text[:match.start()].count("\n") + 1
            yield os.path.relpath(path, REPO), line, match.group(1), match.group(2)


def commands(body):
    """``(cwd relative to the repository, argv)`` of each command in a shell block, ``cd`` followed."""
    cwd = "."
    body = body.replace("\\\n", " ")
    for raw in body.splitlines():
        line = raw.strip()
        if line.startswith("$ "):
            line = line[2:]
        if not line or line.startswith("#"):
            continue
        for part in re.split(r"&&|;|\|", line):
            words = shlex.split(part, comments=True)
            while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
                words = words[1:]  # environment assignments before the command
            if not words:
                continue
            if words[0] == "cd":
                cwd = os.path.normpath(os.path.join(cwd, words[1])) if len(words) > 1 else "."
                continue
            yield cwd, words


def target(cwd, words):
    """``(kind, what, args)`` for a command this test checks, or None for other tools (git, pip, ls...)."""
    here = lambda p: os.path.normpath(os.path.join(cwd, p))  # noqa: E731
    if words[0] == "bash" and len(words) > 1 and words[1].endswith(".sh"):
        return "sh", here(words[1]), words[2:]
    if re.search(r"(^|/)python[0-9.]*$", words[0]) and len(words) > 1:
        if not os.path.exists(os.path.join(REPO, here(words[0]))) and "/" in words[0]:
            return "missing", here(words[0]), []
        if words[1] == "-m":
            return "module", words[2], words[3:]
        if words[1].endswith(".py"):
            return "py", here(words[1]), words[2:]
    return None


def parse_only(run, argv0, args, monkeypatch):
    """Run a program's ``__main__`` until its parser has accepted ``args``; the error if it refuses them."""
    original = argparse.ArgumentParser.parse_known_args

    def parse_known_args(self, args=None, namespace=None):
        original(self, args, namespace)
        raise Parsed()

    def error(self, message):
        raise AssertionError(f"{argv0}: the parser refuses the arguments: {message}")

    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", parse_known_args)
    monkeypatch.setattr(argparse.ArgumentParser, "error", error)
    monkeypatch.setattr(sys, "argv", [argv0, *args])
    if "--help" in args or "-h" in args:  # argparse prints the help and exits 0 while parsing
        with pytest.raises(SystemExit) as stop:
            run()
        assert stop.value.code == 0, f"{argv0} --help exited with {stop.value.code}"
        return
    with pytest.raises(Parsed):
        run()


CHECKED = []


def all_commands():
    found = []
    for doc, line, lang, body in blocks():
        if lang in ("bash", "sh", "shell", "console"):
            for cwd, words in commands(body):
                what = target(cwd, words)
                if what:
                    found.append(pytest.param(doc, line, cwd, what, id=f"{doc}:{line}:{' '.join(words)[:60]}"))
    return found


@pytest.mark.parametrize("doc,line,cwd,what", all_commands())
def test_documented_command_exists_and_parses(doc, line, cwd, what, monkeypatch):
    kind, name, args = what
    assert kind != "missing", f"{doc}:{line}: {name} does not exist (from {cwd})"
    if kind == "module":
        parse_only(lambda: runpy.run_module(name, run_name="__main__", alter_sys=True), name, args, monkeypatch)
        return
    path = os.path.join(REPO, name)
    assert os.path.isfile(path), f"{doc}:{line}: {name} does not exist (the block runs from {cwd}/)"
    if kind == "sh" and name in NO_PARSER:
        return
    if kind == "sh":
        assert name in PROGRAMS, f"{doc}:{line}: {name}: which program reads its flags? (add it to PROGRAMS)"
        module = PROGRAMS[name]
        parse_only(lambda: runpy.run_module(module, run_name="__main__", alter_sys=True), name, args, monkeypatch)
    else:
        parse_only(lambda: runpy.run_path(path, run_name="__main__"), name, args, monkeypatch)


def test_the_docs_show_commands_and_python_blocks_compile():
    assert len(all_commands()) >= 20, "fewer documented commands than expected: did the fence parsing break?"
    for doc, line, lang, body in blocks():
        if lang == "python":
            compile(body, f"{doc}:{line}", "exec")
