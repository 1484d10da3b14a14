"""Links from the pages to files of the repository outside ``docs/``.

The pages are also read on GitHub, where a link such as ``../benchmarks/README.md`` or
``../examples/relax_md_calculate.py`` opens that file, so the pages keep such links as
they are.  MyST already turns a link to an existing file that is not a page into a
download; a link to a *markdown* file outside the source directory, though, it takes for
a page that does not exist, and warns.  This extension settles those links while each
page is read, before Sphinx collects its downloads:

- a file shown as a page of the site (``repo_link_pages``: repository path -> page name)
  becomes a link to that page (to its ``#anchor`` when the entry names one, else to the
  link's own anchor);
- any other existing file becomes a download of the file, as MyST does for the rest;
- a missing file is left alone, so that MyST's warning names it.
"""

import os
from pathlib import Path

from sphinx import addnodes


def _outside_file(env, reftarget):
    """The file a MyST page link names outside the source directory, if it exists."""
    srcdir = Path(env.srcdir).resolve()
    for suffix in env.config.source_suffix:
        path = Path(f"{reftarget}{suffix}")
        if not path.is_absolute():
            path = srcdir / path
        path = path.resolve()
        if path.is_file() and srcdir not in path.parents:
            return path
    return None


def _settle_links(app, doctree):
    env = app.env
    srcdir = Path(env.srcdir).resolve()
    root = (srcdir / app.config.repo_link_root).resolve()
    pages = app.config.repo_link_pages
    # a link's target is relative to the page that holds it
    here = Path(env.doc2path(env.docname)).resolve().parent
    for node in list(doctree.findall(addnodes.pending_xref)):
        if node.get("reftype") != "myst" or node.get("refdomain") != "doc":
            continue
        if node["reftarget"] in env.found_docs:
            continue
        path = _outside_file(env, node["reftarget"])
        if path is None or root not in path.parents:
            continue
        page = pages.get(path.relative_to(root).as_posix())
        if page is not None:
            _point_at_page(node, page)
            continue
        download = addnodes.download_reference(
            refdomain=None, reftype="myst", refdoc=env.docname, refexplicit=True,
            reftarget=_relative(path, here),
        )
        download.extend(child.deepcopy() for child in node.children)
        node.replace_self(download)
    # MyST made these downloads itself; those of files shown on a page link to the page
    for node in list(doctree.findall(addnodes.download_reference)):
        if node.get("reftype") != "myst":
            continue
        path = (here / node["reftarget"]).resolve()
        if root not in path.parents:
            continue
        page = pages.get(path.relative_to(root).as_posix())
        if page is None:
            continue
        link = addnodes.pending_xref(refdomain="doc", reftype="myst", refdoc=env.docname,
                                     refexplicit=node.get("refexplicit", True), reftarget="", reftargetid=None)
        link.extend(child.deepcopy() for child in node.children)
        _point_at_page(link, page)
        node.replace_self(link)


def _point_at_page(node, page):
    page, _, anchor = page.partition("#")
    node["reftarget"] = page
    if anchor:
        node["reftargetid"] = anchor


def _relative(path, start):
    return Path(os.path.relpath(path, start)).as_posix()


def setup(app):
    app.add_config_value("repo_link_root", "..", "env")
    app.add_config_value("repo_link_pages", {}, "env")
    # before the collector that gathers the downloads (priority 500)
    app.connect("doctree-read", _settle_links, priority=400)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
