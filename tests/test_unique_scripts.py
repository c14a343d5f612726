"""The book's extension that drops repeated inline scripts from each page."""

import sys
from pathlib import Path

from sphinx.builders.html._assets import _JavaScript

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "book" / "_ext"))
from unique_scripts import unique_scripts  # noqa: E402


def test_an_inline_script_added_twice_under_none_and_empty_names_is_kept_once():
    thebe = "const THEBE_JS_URL = 'x'"
    scripts = [
        _JavaScript("_static/doctools.js", priority=200),
        _JavaScript(None, body=thebe),
        _JavaScript("_static/sphinx-thebe.js", **{"async": "async"}),
        _JavaScript("", body=thebe),
        _JavaScript(None, body="var togglebuttonSelector = '.toggle'"),
    ]
    assert scripts[1] != scripts[3]  # Sphinx's own comparison keeps both
    kept = unique_scripts(scripts)
    assert kept == [scripts[0], scripts[1], scripts[2], scripts[4]]


def test_different_inline_scripts_and_files_are_all_kept():
    scripts = [
        _JavaScript(None, body="a"),
        _JavaScript(None, body="b"),
        _JavaScript("_static/a.js"),
        _JavaScript("_static/a.js", defer="defer"),
    ]
    assert unique_scripts(scripts) == scripts
