"""One exception hierarchy: every error lirpac raises on purpose derives from LirpacError."""


class LirpacError(Exception):
    """Base class of lirpac's errors."""


class UnsupportedOperationError(LirpacError, NotImplementedError):
    """An op (or a mode of an op) that lirpac cannot bound; the message names op, node, source."""


class InputError(LirpacError, ValueError):
    """Bad input from the user: shapes, eps, norms, boxes, specs."""


class ModelFormatError(LirpacError, ValueError):
    """A model file (ONNX) that cannot be read or is malformed."""


class SpecFormatError(LirpacError, ValueError):
    """A malformed specification file (VNNLIB); the message gives line and column."""
