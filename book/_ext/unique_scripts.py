"""Each inline script once per page.

sphinx-togglebutton and sphinx-thebe add inline scripts (``var togglebuttonSelector``,
``const THEBE_JS_URL = ...``) through ``app.add_js_file(None, body=...)``, which puts
them both into the builder (file name ``None``) and into the registry the builder
re-reads (file name ``""``). Sphinx drops a repeated script only when the two are equal,
and these differ in that name, so every page declared the constants twice and the
browser's console showed an error. This drops such repeats, keyed on the file name with
``None`` read as ``""`` and on the attributes, just before each page is written.
"""


def unique_scripts(scripts):
    """``scripts`` without repeats, in order (Sphinx's ``_JavaScript`` objects)."""
    seen, unique = set(), []
    for script in scripts:
        key = (
            getattr(script, "filename", None) or "",
            tuple(sorted(getattr(script, "attributes", {}).items())),
        )
        if key not in seen:
            seen.add(key)
            unique.append(script)
    return unique


def _on_page(app, pagename, templatename, context, doctree):
    if context.get("script_files"):
        context["script_files"] = unique_scripts(context["script_files"])


def setup(app):
    app.connect("html-page-context", _on_page, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
