"""Analyses of the quantizers on synthetic data and on a trained full-precision model.

Four commands (``lsqbq analyze <command>``, :mod:`lsqbq.analysis.cli`), each writing a CSV and a markdown table:

``error``   quantization error of fp, ls-1, gf-2, gf-3, gf-4, ls-T, ls-2 and the official skip-3 reference schemes
            on N(0,1), Laplace and uniform samples and on a trained model's weights (rows = output channels) and
            activations (rows = images), next to the Lloyd-Max optimum with the same number of levels
            (:mod:`~lsqbq.analysis.lloyd_max`; paper V1 Sec. 3).
``ptq``     post-training quantization: the model's weights quantized with gf-1..4, ls-T, ls-2 (activations full
            precision), test accuracy per scheme (paper V1 Table 1, top rows).
``angles``  per-layer angle and relative error between the activations at each quantizable layer
            (:mod:`~lsqbq.analysis.hooks`) and their quantization per scheme, mean and 95 % interval over images,
            the spread (SD) over images and the rows' tail measures (paper V1 Fig. 4), plus a figure: on a
            teacher's BN outputs and on what its students' activation quantizers see (clamped inputs).
``sweep``   the same angles on synthetic spike-and-slab rows from Gaussian to sparse
            (:mod:`~lsqbq.analysis.sweep`), where ls-2 and gf-4 cross, plus a figure.

The measures themselves are in :mod:`~lsqbq.analysis.measures`; the exact Lloyd-Max references of the
unit-variance densities in :mod:`~lsqbq.analysis.lloyd_max` and :mod:`~lsqbq.analysis.exact`; the files written in
:mod:`~lsqbq.analysis.report` and :mod:`~lsqbq.analysis.figures`. The package never imports :mod:`lsqbq.tables`
(which builds on it).
"""
from .cli import build_parser, main
from .hooks import activation_sites, layer_inputs, quantizable_layers, quantizer_inputs, weight_rows
from .lloyd_max import DISTRIBUTIONS, codebook_mse, lloyd_max, lloyd_max_density, lloyd_max_exact
from .measures import (ANGLE_SCHEMES, ERROR_SCHEMES, PTQ_SCHEMES, REFERENCE_SCHEMES, angle_rows, error_rows,
                       quantize_weights, row_angles, synthetic_rows, tail_measures)
from .sweep import crossing, spike_slab_rows, sweep_rows

__all__ = [
    "ERROR_SCHEMES", "PTQ_SCHEMES", "ANGLE_SCHEMES", "REFERENCE_SCHEMES", "DISTRIBUTIONS", "lloyd_max",
    "lloyd_max_density", "lloyd_max_exact", "codebook_mse", "synthetic_rows", "error_rows", "quantize_weights",
    "angle_rows", "quantizable_layers",
    "weight_rows", "activation_sites", "layer_inputs", "quantizer_inputs", "row_angles", "tail_measures",
    "spike_slab_rows", "sweep_rows", "crossing", "build_parser", "main",
]
