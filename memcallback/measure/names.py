"""The one schema of metric names: every key a memorization check produces, for every producer and consumer.

Keys are relative to a namespace (``PREFIX`` unless the user picks another one), so the logged name of the
memorization score is ``"memorization/score"``. One check logs:

=============================  =====================================================================
``{name}`` for ``SHARPNESS``   mean over the probes of a per-sample statistic at the primary timestep
``flagged_fraction``           fraction of probes flagged as copies: at the primary timestep, with the copy flag
                               (training data given), those whose nearest-neighbour distance ratio is below
                               ``flag_ratio``; else (and at later timesteps) those whose score exceeds
                               ``flag_threshold``
``flag_ratio``, ``flag_fpr``   the copy flag: the lower of 1/3 and (held-out data given) the held-out images'
                               conformal quantile of the distance ratio, and the false-positive rate it holds
                               (NaN without held-out data)
``flag_threshold``             the score level of the score flag: the conformal quantile of the scores at
                               noised held-out images (``score_null_images``, their mean) when null images are
                               given (the primary timestep's flag then), else ``SharpnessConfig.flag_threshold``
``converged_fraction``         fraction of probes whose eigenvalue solves met ``tol``
``t{t}/{name}``                each of the above at measurement timestep ``t`` (the primary one too)
``nn_rate``                    fraction of probes whose sample copies a training image (ground truth)
``nn_rate_lower``              its one-sided 95% Clopper-Pearson lower bound: the copy rate the probes show
                               at 95% confidence (the default stop without held-out data)
``auroc``, ``t{t}/auroc``      AUROC of the memorization score against that ground truth
``sharpness_gap``              mean score at noised training images minus at noised held-out images, with
                               ``score_train_images`` and ``score_heldout_images`` (when a reference is given)
``loss_gap``                   relative denoising-error gap between held-out and training images, with
                               ``loss_train_images`` and ``loss_heldout_images`` (when loss-gap images are given)
``cond/{name}``                conditional metrics (``CONDITIONAL``), ``cond/cond{c}/{name}`` per condition,
                               ``cond/sharpest_condition`` and ``cond/seconds``
``seconds``                    wall time of the whole measurement (per rank)
``partial``                    1.0 when the measurement was cut short by the time budget, else 0.0
``check_failures``             failed checks so far
``overhead``                   check seconds / training seconds so far (``GovernorConfig``), from the first check
                               after some training on (not in ``check_keys``: the first check has none)
``probes_measured``            probes this check sampled: all of them, a prefix (a reduced check) or 0
                               (a light check, the loss gap only), as the cost governor chose; at a labels-only
                               check (the copy rate's light check) they are labelled and the sharpness keys NaN
``loss_gap_images_measured``   training (and as many held-out) images of the loss gap this check measured
=============================  =====================================================================

A light check (chosen by the cost governor, or ``ProbeConfig.every_n_checks > 1``) is of one of two kinds. A
loss-gap check (the monitor is the loss gap, or a check off the ``every_n_checks`` cycle of another monitor) logs the
loss gap's keys with ``loss_gap_images_measured``, ``seconds``, ``partial``, ``check_failures``, ``overhead`` and
``probes_measured`` only. A labels-only check (the monitor is the copy rate) logs every key of a full check, its
sharpness keys NaN. Outside the per-check values come ``stopped`` (1.0 at the step the stop rule fired) and
``safe_step`` (the last check at which the model was not memorizing, in the run summary).
"""

from __future__ import annotations

from collections.abc import Sequence

#: The default namespace of every logged key.
PREFIX = "memorization/"
#: The memorization score in ``[0, 1]`` (mean over probes): the default statistic of the stop rule.
SCORE = "score"
#: Per-sample sharpness statistics (``SharpnessStats.scalars()``), in the order tables and loggers show them.
SHARPNESS = ("score", "mu_max", "mu_topk", "min_mu", "effective_dim", "flat_count", "trace_mu", "eps_norm_sq",
             "hs_norm", "asymmetry", "ritz_residual")
FLAGGED_FRACTION = "flagged_fraction"
CONVERGED_FRACTION = "converged_fraction"
#: Everything measured per probe at each timestep (means of these are the per-timestep scalars).
PER_TIMESTEP = (*SHARPNESS, FLAGGED_FRACTION, CONVERGED_FRACTION)
NN_RATE = "nn_rate"
NN_RATE_LOWER = "nn_rate_lower"
#: The keys of the probes' copy rate, which a labels-only check (sampled and labelled, no sharpness) measures.
COPY_RATE = (NN_RATE, NN_RATE_LOWER)
AUROC = "auroc"
SECONDS = "seconds"
PARTIAL = "partial"
CHECK_FAILURES = "check_failures"
OVERHEAD = "overhead"
PROBES_MEASURED = "probes_measured"
LOSS_GAP_IMAGES_MEASURED = "loss_gap_images_measured"
STOPPED = "stopped"
SAFE_STEP = "safe_step"
#: The sharpness gap and its two halves (``SharpnessGap.summary()``).
SCORE_TRAIN_IMAGES = "score_train_images"
SCORE_HELDOUT_IMAGES = "score_heldout_images"
SHARPNESS_GAP = "sharpness_gap"
REFERENCE = (SCORE_TRAIN_IMAGES, SCORE_HELDOUT_IMAGES, SHARPNESS_GAP)
#: The relative loss gap and the mean denoising errors it compares (``LossGap.summary()``).
LOSS_TRAIN_IMAGES = "loss_train_images"
LOSS_HELDOUT_IMAGES = "loss_heldout_images"
LOSS_GAP = "loss_gap"
LOSS_REFERENCE = (LOSS_TRAIN_IMAGES, LOSS_HELDOUT_IMAGES, LOSS_GAP)
#: The flag's threshold, and the mean of the null scores it was taken from (``memcallback.measure.null``).
FLAG_THRESHOLD = "flag_threshold"
SCORE_NULL_IMAGES = "score_null_images"
NULL = (FLAG_THRESHOLD, SCORE_NULL_IMAGES)
#: The copy flag's threshold on the distance ratio and its false-positive rate (``memcallback.measure.copy_flag``).
FLAG_RATIO = "flag_ratio"
FLAG_FPR = "flag_fpr"
COPY_FLAG = (FLAG_RATIO, FLAG_FPR)
#: Per-sample conditional metrics (``ConditionalReport.per_sample()`` without ground truth).
CONDITIONAL = ("hds", "sd_norm", "hds_normalized", "sd_norm_normalized")
SHARPEST_CONDITION = "sharpest_condition"


def at_timestep(t: int, name: str) -> str:
    """``t{t}/{name}``: a statistic at measurement timestep ``t``."""
    return f"t{t}/{name}"


def of_condition(index: int, name: str) -> str:
    """``cond{index}/{name}``: a conditional statistic of one condition (inside the ``cond/`` group)."""
    return f"cond{index}/{name}"


def conditional(name: str) -> str:
    """``cond/{name}``: a key of ``ConditionalReport.summary()`` as the monitor logs it."""
    return f"cond/{name}"


def per_sample_keys(timesteps: Sequence[int], ground_truth: bool) -> set[str]:
    """Keys of ``SharpnessReport.per_sample()`` for these measurement timesteps (the first is primary)."""
    keys = {at_timestep(t, name) for t in timesteps for name in PER_TIMESTEP} | set(PER_TIMESTEP)
    return keys | ({NN_RATE} if ground_truth else set())


def summary_keys(timesteps: Sequence[int], ground_truth: bool) -> set[str]:
    """Keys of ``SharpnessReport.summary()`` (and of a check's reduced sharpness values)."""
    keys = per_sample_keys(timesteps, ground_truth) | {SECONDS}
    return keys | ({AUROC, NN_RATE_LOWER} | {at_timestep(t, AUROC) for t in timesteps} if ground_truth else set())


def conditional_summary_keys(num_conditions: int) -> set[str]:
    """Keys of ``ConditionalReport.summary()`` without ground truth or spectra, before the ``cond/`` group."""
    per_condition = {of_condition(c, name) for c in range(num_conditions) for name in CONDITIONAL}
    return set(CONDITIONAL) | per_condition | {SHARPEST_CONDITION, SECONDS}


def check_keys(timesteps: Sequence[int], ground_truth: bool, num_conditions: int | None,
               reference: bool = False, loss_gap: bool = False, null: bool = False) -> set[str]:
    """Every key (without prefix) that one successful check of the monitoring core logs (the copy flag's with the
    ground truth, unless the score null flags)."""
    keys = summary_keys(timesteps, ground_truth) | {PARTIAL, CHECK_FAILURES, FLAG_THRESHOLD, PROBES_MEASURED}
    keys |= set(COPY_FLAG) if ground_truth and not null else set()
    keys |= set(REFERENCE) if reference else set()
    keys |= {*LOSS_REFERENCE, LOSS_GAP_IMAGES_MEASURED} if loss_gap else set()
    keys |= {SCORE_NULL_IMAGES} if null else set()
    if num_conditions is not None:
        keys |= {conditional(name) for name in conditional_summary_keys(num_conditions)}
    return keys
