"""Reference tracks of VisionZip and HiPrune (the vision encoder's attention): each runs the
lab's implementation on a case's synthetic tensors, for ``python -m eadp_lab.reference`` (registered with
:func:`eadp_lab.reference.register_track`)."""

from __future__ import annotations
