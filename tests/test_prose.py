"""Values glued into the chapters' prose are plain Python values that myst-nb can format."""

import numpy as np
import torch

from eadp_lab.prose import plain


def test_plain_turns_scalars_into_python_numbers():
    assert type(plain(np.float64(0.25))) is float and plain(np.float64(0.25)) == 0.25
    assert type(plain(np.int64(3))) is int and type(plain(torch.tensor(2))) is int
    assert type(plain(torch.tensor(0.5))) is float and type(plain(np.bool_(True))) is bool
    assert plain("+1") == "+1" and plain([1, 2]) == [1, 2]
    assert f"{plain(np.float32(0.125)):.1%}" == "12.5%"
    arr = np.arange(3)
    assert plain(arr) is arr  # arrays are not scalars: unchanged
