#!/usr/bin/env python3
"""Number, caption and cross-reference every figure of the book (idempotent).

usage: python tools/caption_figures.py [--check] [BOOK]      (BOOK defaults to book/ at the repository root)

myst-nb wraps a code cell's image output in a numbered figure when the cell's metadata holds
``"mystnb": {"figure": {"name": ..., "caption": ...}}``; the prose refers to it with {numref}`name` ("Fig. N" in the
HTML). Jupyter and Colab ignore the metadata, so the notebooks still show the plain plot. This script applies the two
tables below to the chapters:

- FIGURES: (chapter, a substring found in exactly one code cell's source, figure name, caption) -> sets the metadata;
- REFERENCES: (chapter, a substring found in exactly one Markdown cell, old text, new text) -> replaces old by new in
  that cell (the new text carries the {numref}); a line the replacement makes longer than WIDTH is wrapped.

Entries already applied are skipped; nothing else in a notebook changes (no outputs, no other cells), and notebooks are
written back in the repository's format (nbformat's: ``indent=1``, sorted keys, non-ASCII kept, trailing newline).
Because entries locate their cells by content, not by index, the script can be re-run after other branches add or move
cells. Exit status 1, listing the entries, if a substring is not found or is not unique (the other entries are still
applied); with ``--check`` nothing is written and the exit status is also 1 if any entry is not yet applied.
Cells with an image output that no entry captions are listed as a note (tests/test_figure_captions.py fails on them).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]
WIDTH = 118  # longest Markdown line a reference edit leaves (the chapters' prose is wrapped at about this width)


class Figure(NamedTuple):
    chapter: str  # notebook stem, e.g. "sweep" for book/sweep.ipynb
    source: str   # substring of exactly one code cell's source
    name: str     # figure name, unique in the book: fig-<chapter>-<slug>
    caption: str


class Reference(NamedTuple):
    chapter: str
    cell: str     # substring of exactly one Markdown cell (one that the replacement leaves in place)
    old: str      # text replaced, exactly once in that cell
    new: str      # replacement, containing {numref}`name`


FIGURES = [
    # intro
    Figure("intro", "fc.figures.show_images(digits.x_train", "fig-intro-digits",
           "The first 16 training images of scikit-learn's 8×8 digits, each titled with its label. Pixels are "
           "standardised over the training set: dark means above the pixel's mean."),
    Figure("intro", "fig = fc.figures.plot_seed_changes(", "fig-intro-headline",
           "The late phase across seeds: five arms of five seeds each (tanh MLP 64×3, MSE): label-noise SGD, plain "
           "SGD, SAM and plain SGD with a large η/B on digits 3 vs 8, and plain SGD on a teacher-student task it "
           "interpolates. Small points: seeds; squares: arm means with their 95 % t-intervals over seeds in both "
           "directions. Left: change of log MLS against change of log Tr G over the late phase. Right: change of "
           "log MLS against the trend of log training loss, both over the second half of the late phase."),
    # first_network
    Figure("first_network", "fig = fc.figures.plot_history(result.history", "fig-first-network-history",
           "Training curves of the MLP trained by SGD with the learning rate and batch size of the `parameters` "
           "cell: loss (½-MSE, mean over samples, log scale) and accuracy on the full training (solid) and test "
           "(dashed) sets against the SGD step, model in eval mode."),
    # sharpness
    Figure("sharpness", "fig = fc.figures.plot_trace_convergence(", "fig-sharpness-trace-convergence",
           "Hutchinson and Hutch++ estimates of Tr H of the tiny tanh network (float64, fixed measurement subset) "
           "against the number of Rademacher probes (Hessian-vector products): mean ± one standard error over the "
           "probes, probe seed `seed`. Dashed horizontal line: the exact trace of the dense Hessian."),
    Figure("sharpness", 'title="tiny tanh network: SLQ vs exact"', "fig-sharpness-slq-tiny",
           "Spectral density φ(λ) of the tiny tanh network's Hessian by stochastic Lanczos quadrature (Gaussian "
           "smoothing, log y axis), against a normalised histogram of the exact eigenvalues of the dense Hessian."),
    Figure("sharpness", "slq_mlp = dict(", "fig-sharpness-slq-mlp",
           "Spectral density φ(λ) of the Hessian of the trained ReLU MLP on the fixed measurement subset, by "
           "stochastic Lanczos quadrature from Hessian-vector products only (log y axis); no dense Hessian is "
           "formed at this size."),
    Figure("sharpness", 'sweep[["lambda_max", "trace_h", "trace_g", "kappa_1"', "fig-sharpness-rescaling",
           "The trained ReLU MLP with its first hidden layer scaled by c and the next layer by 1/c (the same "
           "function): λ_max, Tr H, Tr G, the relative flatness κ_1 and κ_2 and the adaptive sharpness, each "
           "divided by its value at c = 1, on log–log axes. Invariant quantities lie on the line y = 1."),
    Figure("sharpness", "fc.figures.plot_rescaling_explorer(sweep", "fig-sharpness-rescaling-explorer",
           "Explorer of the rescaling sweep. Left: the curves of the previous figure with a marker at the chosen c; "
           "right: each measure at that c divided by its value at c = 1 (bars, log scale). The static image is "
           "drawn at log10 c = 0.5; the slider works in Jupyter or on Colab."),
    # sgd_dynamics
    Figure("sgd_dynamics", "fig = fc.figures.plot_quadratic_gd(", "fig-sgd-dynamics-quadratic",
           "Gradient descent on the quadratic L(θ) = ½λθ² (λ = 1, θ_0 = 1) for four values of ηλ. Left: |θ_t| "
           "against the step t (log scale); right: the per-step factor |1 − ηλ| against ηλ, which exceeds 1 "
           "(divergence) exactly when ηλ > 2."),
    Figure("sgd_dynamics", "fig = fc.figures.plot_edge_of_stability(", "fig-sgd-dynamics-eos",
           "Full-batch GD on the whole training set at three learning rates η, same initialisation (float64 on the "
           "CPU). Left: λ_max of the training-loss Hessian (Lanczos, every `gd_track_every` steps) against the step, "
           "with the stability threshold 2/η dashed in the same colour; right: the training loss (log scale)."),
    Figure("sgd_dynamics", "fig = fc.figures.plot_lr_batch_grid(", "fig-sgd-dynamics-lr-batch",
           "One SGD run per (η, B), each stopped when its full training loss first falls below `threshold`. Left: "
           "the exact Tr G against the toy stability bound 2B/η (log–log; dashed: y = x, points below it satisfy "
           "Tr G ≤ 2B/η); right: mean MLS over the training set against Tr G. Colour: learning rate; marker: batch "
           "size."),
    # compression
    Figure("compression", "fc.figures.plot_local_ellipse(", "fig-compression-ellipse",
           "The 2-in/2-out tanh network (16 hidden units, seed 4) around x̄ = (0.5, −0.3). Left: a disc of inputs of "
           "radius δ = 0.5; right: its image (points) and the linearised image f(x̄) + J_x u, an ellipse with "
           "semi-axes δσ_1 and δσ_2 along the left singular vectors of J_x (dashed)."),
    Figure("compression", "fig = fc.figures.plot_ball_convergence(", "fig-compression-ball",
           "Relative error of the Gaussian-ball (Monte-Carlo) estimates of LVR, MLS and D_loc against their exact "
           "input-Jacobian values, as a function of the ball variance α (log–log), one line per number of samples: "
           "median over `ball_inputs` training inputs of the trained network in float64, with the same noise "
           "directions for every α."),
    Figure("compression", "fig = fc.figures.plot_layer_profiles(", "fig-compression-layers",
           "Mean log LVR, mean MLS and mean D_loc over the fixed measurement subset against the layer l, for the "
           "tanh MLP at initialisation and after training: solid, h_l versus the input; dashed, f versus h_{l−1}. "
           "log LVR sums min(m_l, d) log singular values, so compare the two networks at a layer, not layers of "
           "different width."),
    Figure("compression", "fig = fc.figures.plot_measure_histograms(", "fig-compression-histograms",
           "Histograms of the per-input log LVR, MLS and D_loc of the input-to-output map over the fixed "
           "measurement subset of training inputs, at initialisation and after training (inputs with zero volume, "
           "if any, are counted in the legend)."),
    # bounds
    Figure("bounds", "fig = fc.figures.plot_b4_steps(", "fig-bounds-b4-steps",
           "Slack of B4 (nats, averaged over the n fixed training inputs) split into the links of its derivation, "
           "one stacked bar per trained network (task and learning rate). The links add up to B4's RHS − LHS "
           "(black tick); the hatched block on top is the further slack of writing the bound with Tr G instead of "
           "Tr G_{W_1}."),
    Figure("bounds", "fc.widgets.explorer(fc.figures.plot_amgm", "fig-bounds-amgm-explorer",
           "The AM–GM step of B4 for a geometric Jacobian spectrum σ_j = σ_1 ρ^{j−1}. Left: the spectrum; right: "
           "log LVR and its AM–GM bound (r/2) log(Σ_j σ_j²/r) against ρ, the current ρ marked; the gap closes only "
           "at ρ = 1. The static image is drawn at ρ = 0.7, r = 10; the sliders work in Jupyter or on Colab."),
    # network_bounds
    Figure("network_bounds", "fig = fc.figures.plot_slack_by_network(", "fig-network-bounds-slack",
           "Slack (RHS/LHS, log scale) of the first-layer bounds B1 and B2 and of the network-wide bounds B6 and B7 "
           "(each against Σ_l Tr G_{W_l} and against Tr G) for every 10-class tanh MLP of the sweep (learning rate "
           "and seed), on the same n fixed training inputs in float64. Dashed line: slack 1, a tight bound."),
    Figure("network_bounds", "fig = fc.figures.plot_rescaling(reparam", "fig-network-bounds-rescaling",
           "The small ReLU MLP with layer 1 scaled by c and layer 2 by 1/c (the same function f): Tr G, "
           "Σ_l Tr G_{W_l}, NMLS, the right side of B1–B4 with Tr G_{W_1} and with Tr G, and the relative flatness "
           "κ_l of every layer, each divided by its value at c = 1, on log–log axes. Invariant quantities lie on "
           "the line y = 1."),
    # late_phase
    Figure("late_phase", "mlp_runs = {k: v for k, v in histories.items()", "fig-late-phase-mlp",
           "The two MLP runs (label-noise SGD and plain SGD, same initialisation) against the SGD step: training "
           "loss (log scale), Tr H (band: ±1 standard error; dashed: exact Tr G), λ_max, mean MLS, mean log LVR and "
           "mean local dimensionality on the fixed measurement subset of training inputs. Dotted vertical lines: "
           "start of each run's late phase."),
    Figure("late_phase", "cnn_runs = {k: v for k, v in histories.items()", "fig-late-phase-cnn",
           "The same six measures for the LeNet-style CNN trained with label-noise SGD, against the SGD step: "
           "training loss (log scale), Tr H (band: ±1 standard error; dashed: exact Tr G), λ_max, mean MLS, mean "
           "log LVR and mean local dimensionality. Dotted vertical line: start of the late phase."),
    Figure("late_phase", 'title="late phase: Spearman correlation with sharpness"', "fig-late-phase-correlations",
           "Spearman correlation between each sharpness measure (Tr G, Tr H, λ_max) and each compression measure "
           "(mean MLS, mean log LVR, mean local dimensionality) over the late-phase checkpoints of each run "
           "(colour), with percentile-bootstrap 95% intervals over checkpoints; checkpoints of one trajectory are "
           "autocorrelated, so the intervals are optimistic."),
    Figure("late_phase", "fig = fc.figures.plot_train_test_sharpness(", "fig-late-phase-test-sharpness",
           "Left: Tr H on the fixed training (solid) and test (dashed) measurement subsets against the SGD step, "
           "log scale; right: mean log LVR. One colour per run; dotted lines mark the start of each late phase."),
    # sweep
    Figure("sweep", "fig = fc.figures.plot_sweep_scatter(", "fig-sweep-scatter",
           "Sharpness (rows: Tr H, λ_max, relative flatness κ of the last layer; log axis) against compression "
           "(columns: mean MLS, mean log LVR, mean local dimensionality, NMLS) at matched training loss, one point "
           "per run of the sweep, coloured by η/B (log colour scale); all measured on the same fixed training "
           "inputs."),
    Figure("sweep", 'title=f"matched loss: Spearman r, {len(results)} runs"', "fig-sweep-correlations",
           "Spearman correlation between each sharpness measure (Tr H, λ_max, relative flatness, adaptive "
           "sharpness) and each compression measure across the sweep's runs at matched training loss, with "
           "percentile-bootstrap 95% intervals from resampling runs (Tr G, nearly equal to Tr H at this loss, is "
           "left out)."),
    Figure("sweep", "fig = fc.figures.plot_vs_lr_over_batch(", "fig-sweep-vs-lr-over-b",
           "Tr H (log axis), mean MLS, mean log LVR and mean local dimensionality at matched training loss against "
           "η/B (log axis): one point per run, marker per batch size, and a line through the mean over runs at "
           "each η/B."),
    Figure("sweep", 'title="matched loss: both sides, one point per run"', "fig-sweep-bound-sides",
           "Both sides of B2 (left panel: left side $\\frac1n\\sum_i\\lVert x_i\\rVert^2\\,\\mathrm{MLS}(x_i)^2$ against "
           "right side $\\lVert W_1\\rVert_2^2\\,\\mathrm{Tr}\\,G_{W_1}$) "
           "and of the network-wide bound B6 (right panel), one point per run of the sweep at matched training loss "
           "(< 1e-3), coloured by batch size, log-log; the dashed diagonal is where a bound would be tight, every "
           "point lies below it. The paper's appendix figure G.4 is the analogue for its runs."),
    Figure("sweep", "fig = fc.figures.plot_train_vs_test(", "fig-sweep-train-vs-test",
           "Tr H on the test inputs against Tr H on the training measurement subset at matched training loss, one "
           "point per run coloured by η/B, log–log with the diagonal y = x."),
    Figure("sweep", 'title="matched loss: Spearman r by architecture"', "fig-sweep-architectures",
           "Spearman correlation of Tr H and λ_max with mean MLS, mean log LVR and mean local dimensionality at "
           "matched training loss, per architecture (colour: MLP, LeNet-style CNN, tiny ViT), with bootstrap 95% "
           "intervals over runs. The ViT rests on its runs that did not diverge; intervals over so few runs are "
           "wide or degenerate."),
    # local_dim
    Figure("local_dim", "fig = fc.figures.plot_weight_scaling(", "fig-local-dim-scaling",
           "A trained bias-free ReLU MLP with every weight matrix multiplied by c (so f → c^L f): Tr G, mean MLS², "
           "geometric-mean LVR, NMLS and mean D_loc on all training images (float64), each divided by its value at "
           "c = 1, on log–log axes. A scale-invariant quantity lies on y = 1."),
    Figure("late_phase", "fig = fc.figures.plot_seed_changes(", "fig-late-phase-seeds",
           "The five arms of Table 1, five seeds each. Small points: seeds; squares: arm means with their 95 % "
           "t-intervals over seeds in both directions. Left: change of log MLS against change of log Tr G over the "
           "whole late phase. Right: change of log MLS against the trend of log training loss over the second half "
           "of the late phase; arms left of the vertical line compress while their loss is still falling."),
    Figure("beyond", "fig = fc.figures.plot_bound_sides(", "fig-beyond-bound-sides",
           "Left side against right side of B2 (left panel) and B6 (right panel) for every MSE run of this "
           "chapter, log–log: each run is a thin line through its late-phase checkpoints, ending in a dot at the "
           "last one, coloured by training method. Dashed: LHS = RHS, where the bound would be tight; every point "
           "lies below it."),
    Figure("execution", "fig = fc.figures.plot_run_times(", "fig-execution-run-times",
           "Wall time of each page's last run by `make execute`, in seconds, in book order from the top; dashed: "
           "the budget of 3 minutes per chapter. The table above gives the machine, threads and load of each run."),
    Figure("local_dim", "fig = fc.figures.plot_measure_trajectories(", "fig-local-dim-late-phase",
           "Exact Tr G (log axis), mean MLS, mean log LVR and mean local dimensionality D_loc on all training "
           "images against the SGD step, for plain SGD and label-noise SGD from the same initialisation. Dotted "
           "vertical lines: start of each run's late phase (training loss below `late_threshold`)."),
    Figure("local_dim", "fig = fc.figures.plot_sharpness_vs_compression(", "fig-local-dim-grid",
           "Mean MLS, mean log LVR and mean D_loc against the exact Tr G across the η × B grid, one point per run "
           "(seed `seed`) at its first checkpoint with training loss below the matched-loss threshold. Colour: "
           "learning rate; marker: batch size."),
    # beyond
    Figure("beyond", "fig = fc.figures.plot_group_bars(", "fig-beyond-methods",
           "Tr G = (1/n) Σ‖J_θ‖²_F, mean MLS, mean log LVR and mean local dimensionality on all training inputs, "
           "`late_steps` steps after the training loss first fell below the threshold, for each MSE training "
           "method (SGD at three η/B, label noise, SAM). Bars: mean over seeds; dots: the individual runs."),
    Figure("beyond", "fig = fc.figures.plot_radii(runs", "fig-beyond-radii",
           "Robustness radii of each run against its mean MLS on the test inputs (log–log): the first-order radius "
           "margin/(√2 MLS) (open markers) and the empirical radius min(PGD, segment) (filled), both medians over "
           "the attacked test inputs. Grey line: the median segment radius over all runs, the scale set by the "
           "data."),
    Figure("beyond", "fig = fc.figures.plot_radius_scatter(", "fig-beyond-radius-per-input",
           "Each test input of one SGD run with small η/B and one SAM run (first seed): the first-order radius "
           "margin/(√2 MLS) (x) against the empirical radius min(PGD, segment) (y), log–log with the diagonal "
           "y = x; points below it are inputs whose first-order radius overstates the distance to an adversarial "
           "example."),
    Figure("beyond", "fig = fc.figures.plot_group_scatter(both", "fig-beyond-generalisation",
           "Generalisation gap (test − train ½-MSE loss, noise-free targets) and mean MLS against Tr H, one point "
           "per run: the stored learning-rate × batch-size sweep at matched training loss and this chapter's MSE "
           "runs at the end of their late phase (colour)."),
    Figure("beyond", "fig = fc.figures.plot_group_scatter(gen10", "fig-beyond-gen10",
           "Test error (on all 360 test images) and generalisation gap (test − train ½-MSE loss) against the exact "
           "Tr G, one point per run of the 10-class digits store (tanh MLP 64 × 2, plain SGD, each run at its first "
           "checkpoint with training loss below the matched-loss threshold); colour: learning rate."),
    Figure("beyond", "traj = {f\"{m}, seed {s}\": h", "fig-beyond-ce-trajectories",
           "Tr H of each run's own loss, the loss-independent Tr G = (1/n) Σ‖J_θ‖²_F and the mean MLS (log axes) "
           "against the SGD step, for an MSE (SGD) run and a cross-entropy run with the same optimiser and "
           "initialisation (first seed). Dotted lines: start of each late phase."),
]

REFERENCES = [
    # intro
    Reference("intro", "A glance at the default data", "A glance at the default data:",
              "A glance at the default data ({numref}`fig-intro-digits`):"),
    Reference("intro", "is the **label-noise arm**", "The result is the **label-noise arm**",
              "The result ({numref}`fig-intro-headline`) is the **label-noise arm**"),
    # first_network
    Reference("first_network", "saturates: the network is approaching the *interpolation* regime",
              "The training loss keeps falling (in the second half of training too)",
              "In {numref}`fig-first-network-history` the training loss keeps falling (in the second half of "
              "training too)"),
    # sharpness
    Reference("sharpness", "Hutch++ pays off from about a hundred probes on",
              "The Hutchinson error bars shrink", "In {numref}`fig-sharpness-trace-convergence` the Hutchinson error "
              "bars shrink"),
    Reference("sharpness", "is the familiar shape of a trained network's Hessian",
              "The density is the familiar shape",
              "The density ({numref}`fig-sharpness-slq-tiny`) is the familiar shape"),
    Reference("sharpness", "The spectral density of the trained MLP",
              "The spectral density of the trained MLP (",
              "The spectral density of the trained MLP ({numref}`fig-sharpness-slq-mlp`, "),
    Reference("sharpness", "The outputs change only by float32 round-off", "over the sweep, with",
              "over the sweep ({numref}`fig-sharpness-rescaling`), with"),
    Reference("sharpness", "The outputs change only by float32 round-off", "Explore the sweep: the slider",
              "Explore the sweep in {numref}`fig-sharpness-rescaling-explorer`: the slider"),
    # sgd_dynamics
    Reference("sgd_dynamics", "## Linear stability on a quadratic", "$\\lambda > 2/\\eta$. A minimum",
              "$\\lambda > 2/\\eta$ ({numref}`fig-sgd-dynamics-quadratic`). A minimum"),
    Reference("sgd_dynamics", "show on this small task:",
              "What the table and figure show", "What the table and {numref}`fig-sgd-dynamics-eos` show"),
    Reference("sgd_dynamics", "Both predictions of the toy model hold in direction",
              "Both predictions of the toy model hold in direction,",
              "Both predictions of the toy model hold in direction ({numref}`fig-sgd-dynamics-lr-batch`),"),
    # compression
    Reference("compression", "its area is $\\mathrm{LVR}$ times the area of the disc", "The image of the disc is",
              "The image of the disc ({numref}`fig-compression-ellipse`, right) is"),
    Reference("compression", "the bias of the nonlinearity); for small balls", "For large balls the error",
              "For large balls ({numref}`fig-compression-ball`) the error"),
    Reference("compression", "averaged over the measurement subset, at initialisation and after training",
              "at initialisation and after training:",
              "at initialisation and after training (table and {numref}`fig-compression-layers`):"),
    Reference("compression", "are shifted up and wider (larger percentile ranges)",
              "the distributions of $\\log\\mathrm{LVR}$ and MLS are",
              "the distributions of $\\log\\mathrm{LVR}$ and MLS ({numref}`fig-compression-histograms`) are"),
    # bounds
    Reference("bounds", "The Frobenius identity costs nothing", "(hatched)",
              "(hatched in {numref}`fig-bounds-b4-steps`)"),
    Reference("bounds", "(on Colab or a local Jupyter) you can see", "With the sliders (on Colab",
              "With the sliders of {numref}`fig-bounds-amgm-explorer` (on Colab"),
    # network_bounds
    Reference("network_bounds", "## Network-wide versus first-layer: tighter? more stable?",
              "against $\\Tr G$.", "against $\\Tr G$ ({numref}`fig-network-bounds-slack`)."),
    Reference("network_bounds", "separates the quantities cleanly:", "The figure separates",
              "{numref}`fig-network-bounds-rescaling` separates"),
    # late_phase
    Reference("late_phase", "Six panels per figure", "Six panels per figure:",
              "Six panels per figure ({numref}`fig-late-phase-mlp`: the two MLP runs; "
              "{numref}`fig-late-phase-cnn`: the CNN):"),
    Reference("late_phase", "## Correlations over the late phase",
              "checkpoints (`fc.stats.checkpoint_correlations`:",
              "checkpoints ({numref}`fig-late-phase-correlations`; `fc.stats.checkpoint_correlations`:"),
    Reference("late_phase", "## Sharpness on test data", "against the same estimate on training\ndata.",
              "against the same estimate on training\ndata ({numref}`fig-late-phase-test-sharpness`)."),
    # sweep
    Reference("sweep", "## Sharpness versus compression", "Each point is one run",
              "In {numref}`fig-sweep-scatter`, each point is one run"),
    Reference("sweep", "and relative flatness correlate in the same direction", "Reading the table (Spearman",
              "Reading the table and {numref}`fig-sweep-correlations` (Spearman"),
    Reference("sweep", "## Larger $\\eta/B$: flatter and more compressed", "the ratio $\\eta/B$ (marker:",
              "the ratio $\\eta/B$ ({numref}`fig-sweep-vs-lr-over-b`; marker:"),
    Reference("sweep", "## Sharpness on test data", "of the value), one point per run.",
              "of the value), one point per run ({numref}`fig-sweep-train-vs-test`)."),
    Reference("sweep", "reproduces the positive correlation of sharpness with log LVR",
              "The CNN reproduces", "In {numref}`fig-sweep-architectures`, the CNN reproduces"),
    # local_dim
    Reference("local_dim", "The fitted exponents match the predicted powers",
              "constant to every printed digit:",
              "constant to every printed digit ({numref}`fig-local-dim-scaling`):"),
    Reference("execution", "The whole book took", "The whole book took",
              "{numref}`fig-execution-run-times` shows the same times. The whole book took"),
    Reference("late_phase", "What the five arms show, with", "(Table 1, Table 2, figure):",
              "(Table 1, Table 2, {numref}`fig-late-phase-seeds`):"),
    Reference("beyond", "Here the two sides move together, but nothing forces them to.",
              "but nothing forces them to.**", "but nothing forces them to.** ({numref}`fig-beyond-bound-sides`)"),
    Reference("local_dim", "under label noise the trace of the curvature falls several-fold",
              "In these two runs (one seed each),",
              "In these two runs (one seed each; {numref}`fig-local-dim-late-phase`),"),
    Reference("local_dim", "MLS tracks $\\Tr G$ almost perfectly", "Across the grid MLS",
              "Across the grid ({numref}`fig-local-dim-grid`) MLS"),
    # beyond
    Reference("beyond", "All three work, and compression follows", "compression follows.**",
              "compression follows** ({numref}`fig-beyond-methods`)."),
    Reference("beyond", "Lower MLS buys robustness", "far less than first order promises.**",
              "far less than first order promises** ({numref}`fig-beyond-radii`)."),
    Reference("beyond", "Lower MLS buys robustness", "(last figure, seed 0)",
              "({numref}`fig-beyond-radius-per-input`, seed 0)"),
    Reference("beyond", "At this scale both readings fit the data equally well",
              "fit the data equally well.**", "fit the data equally well** ({numref}`fig-beyond-generalisation`)."),
    Reference("beyond", "With a real test error, neither reading predicts it", "neither reading predicts it**",
              "neither reading predicts it** ({numref}`fig-beyond-gen10`)"),
    Reference("beyond", "Cross-entropy flatness is not compression.", "(figure, seed 0)",
              "({numref}`fig-beyond-ce-trajectories`, seed 0)"),
]


def source(cell: dict) -> str:
    """A cell's source as one string (notebooks store it as a list of lines or as a string)."""
    src = cell.get("source", "")
    return src if isinstance(src, str) else "".join(src)


def set_source(cell: dict, text: str) -> None:
    """Store ``text`` as the cell's source in nbformat's on-disk form: a list of lines, each keeping its newline."""
    cell["source"] = text.splitlines(keepends=True)


def has_image(cell: dict) -> bool:
    """True for a code cell with an image/png output (what myst-nb turns into a figure)."""
    return cell.get("cell_type") == "code" and any("image/png" in o.get("data", {}) for o in cell.get("outputs", []))


def flat(text: str) -> str:
    """``text`` with every run of whitespace as one space (a reference may have been wrapped onto two lines)."""
    return re.sub(r"\s+", " ", text)


def find_cell(nb: dict, cell_type: str, text: str) -> tuple[dict | None, str]:
    """The one cell of ``cell_type`` whose source contains ``text`` (up to line breaks), else (None, why)."""
    hits = [c for c in nb["cells"] if c.get("cell_type") == cell_type and flat(text) in flat(source(c))]
    if len(hits) == 1:
        return hits[0], ""
    return None, f"{cell_type} cell substring {'not found' if not hits else f'found in {len(hits)} cells'}"


def wrap(line: str, width: int = WIDTH) -> list[str]:
    """Split a Markdown line longer than ``width`` at its last space within ``width`` that lies outside backtick
    spans and inline math (repeatedly); a line with no such space is left as it is."""
    lines = []
    while len(line) > width:
        breaks = [i for i, ch in enumerate(line[:width + 1]) if ch == " " and i > 0
                  and line[:i].count("`") % 2 == 0 and line[:i].count("$") % 2 == 0]
        if not breaks:
            break
        lines.append(line[:breaks[-1]])
        line = line[breaks[-1] + 1:]
    return [*lines, line]


def apply_figure(nb: dict, entry: Figure) -> str:
    """Set the cell's mystnb.figure metadata; return "applied", "skipped" or an error message."""
    cell, why = find_cell(nb, "code", entry.source)
    if cell is None:
        return why
    if not has_image(cell):
        return "the code cell has no image/png output"
    wanted = {"caption": entry.caption, "name": entry.name}
    mystnb = cell.setdefault("metadata", {}).setdefault("mystnb", {})
    if mystnb.get("figure") == wanted:
        return "skipped"
    mystnb["figure"] = wanted
    return "applied"


def apply_reference(nb: dict, entry: Reference) -> str:
    """Replace ``old`` by ``new`` in the Markdown cell; return "applied", "skipped" or an error message."""
    cell, why = find_cell(nb, "markdown", entry.cell)
    if cell is None:
        return why
    text = source(cell)
    if flat(entry.new) in flat(text):
        return "skipped"
    count = text.count(entry.old)
    if count != 1:
        return f"old text {'not found' if count == 0 else f'found {count} times'} in the Markdown cell"
    lines = text.replace(entry.old, entry.new).split("\n")
    set_source(cell, "\n".join(part for line in lines
                               for part in (wrap(line) if "{numref}" in line else [line])))
    return "applied"


def write_notebook(nb: dict, path: Path) -> None:
    """Write ``nb`` as nbformat does (indent 1, sorted keys, non-ASCII kept) plus a trailing newline."""
    with path.open("w", encoding="utf-8") as f:
        json.dump(nb, f, indent=1, ensure_ascii=False, sort_keys=True)
        f.write("\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("book", nargs="?", default=str(ROOT / "book"), help="folder holding the chapters")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if an entry is not applied")
    args = parser.parse_args(argv)
    book = Path(args.book)
    if not book.is_dir():
        raise ValueError(f"book: {book} is not a folder; pass the folder holding the .ipynb chapters")
    names = [f.name for f in FIGURES]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"FIGURES: names used twice: {duplicates}; give every figure its own name")

    errors, pending, counts = [], [], {"applied": 0, "skipped": 0}
    notebooks = {path.stem: json.loads(path.read_text(encoding="utf-8")) for path in sorted(book.glob("*.ipynb"))}
    for chapter in dict.fromkeys(e.chapter for e in [*FIGURES, *REFERENCES]):
        if chapter not in notebooks:
            errors.append(f"{chapter}: no notebook {book / (chapter + '.ipynb')}")
            continue
        nb, changed = notebooks[chapter], False
        for entry in [e for e in [*FIGURES, *REFERENCES] if e.chapter == chapter]:
            apply = apply_figure if isinstance(entry, Figure) else apply_reference
            result = apply(nb, entry)
            what = entry.name if isinstance(entry, Figure) else repr(entry.new)
            label = f"{chapter}: {type(entry).__name__} {what}"
            if result not in counts:
                errors.append(f"{label}: {result}")
                continue
            counts[result] += 1
            if result == "applied":
                changed = True
                pending.append(label)
        if changed and not args.check:
            write_notebook(nb, book / f"{chapter}.ipynb")
    for chapter, nb in notebooks.items():
        for i, cell in enumerate(nb["cells"]):
            if has_image(cell) and "figure" not in cell.get("metadata", {}).get("mystnb", {}):
                print(f"note: {chapter}.ipynb cell {i} has an image output and no caption entry", file=sys.stderr)
    verb = "to apply" if args.check else "applied"
    print(f"{counts['applied']} entries {verb}, {counts['skipped']} already applied, {len(errors)} failed")
    for line in errors:
        print(f"error: {line}", file=sys.stderr)
    if args.check:
        for line in pending:
            print(f"not applied: {line}", file=sys.stderr)
    return 1 if errors or (args.check and pending) else 0


if __name__ == "__main__":
    sys.exit(main())
