"""Model analysis: parameter and multiply-add counts against the published figures."""

from .complexity import (  # noqa: F401
    REFERENCE_INPUT_SIZE,
    REFERENCES,
    Complexity,
    ReferenceFigures,
    analyze_models,
    compare_with_references,
    complexity,
    count_mult_adds,
    count_mult_adds_while,
    count_parameters,
    format_breakdown,
    format_table,
    reference_figures,
)
