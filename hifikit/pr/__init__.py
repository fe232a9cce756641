"""Upstream pull-request preparation: ``hifikit pr export`` and ``hifikit pr check``.

template.py reads pr/template.yaml and maps the patch series onto upstream-style
commits; gitrepo.py runs git; export.py builds the repository, the format-patch
files and PR.md (evidence.py reads the runs database, describe.py writes the
text); check.py applies an export to a fresh pristine tree, builds and tests it
(editorconfig.py implements the tree's .editorconfig rules).
"""
