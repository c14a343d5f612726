"""Each script once per page.

sphinx-thebe adds its inline configuration script (``const THEBE_JS_URL = ...``) every
time Sphinx reads documents; when that happens twice in one build the page declares the
constants twice and the browser's console shows an error. Sphinx removes duplicate
script files but not duplicate inline scripts, so this drops repeats just before each
page is written.
"""


def _unique_scripts(app, pagename, templatename, context, doctree):
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, unique = set(), []
    for script in scripts:
        key = (
            str(script),
            tuple(sorted(getattr(script, "attributes", {}).items())),
        )
        if key not in seen:
            seen.add(key)
            unique.append(script)
    context["script_files"] = unique


def setup(app):
    app.connect("html-page-context", _unique_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
