"""All op families; importing this package fills the registry."""
from lirpac.ir.ops import activations, arith, leaf, linear, shape  # noqa: F401
from lirpac.ir.ops import folding  # noqa: F401
from lirpac.ir.ops import elementary  # noqa: F401
from lirpac.ir.ops import bivariate, normalization, pooling, softmax  # noqa: F401
from lirpac.ir.ops import conv_transpose, scatter, structure  # noqa: F401
from lirpac.ir.ops import hard_activations  # noqa: F401
from lirpac.ir.ops import embedding  # noqa: F401
from lirpac.ir.ops import relu_variants  # noqa: F401
from lirpac.ir.ops import aten_composites  # noqa: F401
