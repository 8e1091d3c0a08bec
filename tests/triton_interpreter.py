"""Run Triton's CPU interpreter (3.5-3.6) under numpy >= 2.4: it turns loop bounds into Python ints with
`int(array)` on one-element arrays, which numpy 2.4 refuses ("only 0-dimensional arrays can be converted"); the
kernels' `range(0, tl.cdiv(K, BLOCK_K))` loops then fail before they run. Import this module (it patches on import)
before a kernel runs in the interpreter."""

import numpy as np

try:
    from triton.runtime import interpreter as _interp
except ImportError:  # no Triton: nothing to patch
    _interp = None


def _index(self) -> int:
    return int(np.asarray(self.handle.data).reshape(-1)[0])


if _interp is not None and not getattr(_interp._patch_lang_tensor, "_scalar_index", False):
    _orig = _interp._patch_lang_tensor

    def _patch_lang_tensor(tensor, *scope):
        _orig(tensor, *scope)
        if scope:  # 3.6: patched attributes are restored after each launch
            scope[0].set_attr(tensor, "__index__", _index)
        else:
            tensor.__index__ = _index

    _patch_lang_tensor._scalar_index = True
    _interp._patch_lang_tensor = _patch_lang_tensor
