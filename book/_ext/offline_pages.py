"""Sphinx extension for the book: pages that need nothing from the network.

Thebe (live kernels from a Binder) is off in this book, but sphinx-thebe still declares its
CDN URL twice on every page, which raises "Identifier 'THEBE_JS_URL' has already been
declared" in the browser. This drops those declarations and the thebe loader.
"""


def _drop_thebe(app, pagename, templatename, context, doctree):
    scripts = context.get("script_files")
    if not scripts:
        return
    kept = []
    for script in scripts:
        body = getattr(script, "attributes", {}).get("body", "") or ""
        if "THEBE_JS_URL" in body or "sphinx-thebe" in str(script):
            continue
        kept.append(script)
    context["script_files"] = kept


def setup(app):
    app.connect("html-page-context", _drop_thebe, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
