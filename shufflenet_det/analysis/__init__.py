"""Model analysis: parameter and multiply-add counts against the published figures."""

from .complexity import REFERENCE_INPUT_SIZE, REFERENCES, Complexity, ReferenceFigures, analyze_models  # noqa: F401
from .complexity import compare_with_references, complexity, count_mult_adds, count_mult_adds_while  # noqa: F401
from .complexity import count_parameters, format_breakdown, format_table  # noqa: F401
