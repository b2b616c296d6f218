"""The book's figures. They only draw: every function takes computed data (histories, result tables, measures,
closed-form toys) and returns a matplotlib figure, drawing on given axes or new ones; none computes a measure,
trains or modifies a model. Axis labels come from :data:`flatcomp_tutorial.measures.LABELS`.

Modules, one group of chapters each: ``_style`` (shared axes, grid/legend/title tail, log ticks, sizes, labels),
``foundations`` ("A first network", "Measuring sharpness", "Measuring compression"), ``dynamics`` ("Why SGD finds
flat minima", "Local dimensionality is not controlled by sharpness"), ``bounds`` (the bounds chapters and the
rescaling experiment), ``reproduction`` (the two reproduction chapters), ``beyond`` ("Beyond the paper" and the
introduction's headline figure), ``appendix`` (the execution statistics). Every drawing function is re-exported here: ``fc.figures.plot_history(...)``.
"""
from __future__ import annotations

from .appendix import plot_run_times
from .beyond import plot_group_bars, plot_group_scatter, plot_headline, plot_radii, plot_radius_scatter
from .bounds import (plot_amgm, plot_b4_steps, plot_bound_sides, plot_rescaling, plot_rescaling_explorer,
                     plot_slack_by_network)
from .dynamics import (plot_edge_of_stability, plot_lr_batch_grid, plot_measure_trajectories, plot_quadratic_gd,
                       plot_sharpness_vs_compression, plot_weight_scaling)
from .foundations import (plot_ball_convergence, plot_history, plot_layer_profiles, plot_local_ellipse,
                          plot_measure_histograms, plot_spectral_density, plot_trace_convergence, show_images)
from .reproduction import (plot_correlations, plot_late_phase, plot_seed_changes, plot_sweep_scatter,
                           plot_train_test_sharpness, plot_train_vs_test, plot_vs_lr_over_batch)

__all__ = [
    "plot_history", "show_images", "plot_trace_convergence", "plot_spectral_density", "plot_local_ellipse",
    "plot_ball_convergence", "plot_layer_profiles", "plot_measure_histograms",
    "plot_quadratic_gd", "plot_edge_of_stability", "plot_lr_batch_grid", "plot_measure_trajectories",
    "plot_weight_scaling", "plot_sharpness_vs_compression",
    "plot_b4_steps", "plot_amgm", "plot_bound_sides", "plot_slack_by_network", "plot_rescaling", "plot_rescaling_explorer",
    "plot_late_phase", "plot_train_test_sharpness", "plot_correlations", "plot_sweep_scatter", "plot_vs_lr_over_batch",
    "plot_train_vs_test", "plot_seed_changes",
    "plot_group_bars", "plot_group_scatter", "plot_radii", "plot_headline", "plot_radius_scatter",
    "plot_run_times",
]
