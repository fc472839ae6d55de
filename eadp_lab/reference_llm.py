"""Reference tracks of FastV, PyramidDrop, DART and SparseVLM (inside the language model): each runs the
lab's implementation on a case's synthetic tensors, for ``python -m eadp_lab.reference`` (registered with
:func:`eadp_lab.reference.register_track`)."""

from __future__ import annotations
