"""Sphinx configuration: the API reference is generated from the package's docstrings."""

project = "interp"
author = "interp developers"
extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.viewcode"]
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "undoc-members": False}
html_theme = "alabaster"
exclude_patterns = ["_build"]
