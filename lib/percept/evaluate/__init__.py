"""Agreement of metrics with human judgements on BAPPS: 2AFC score, JND mAP, and 2AFC tuning.

>>> from percept.evaluate import build_metric, evaluate_bapps, twoafc_score
>>> twoafc_score([0.1, 0.5], [0.3, 0.2], judge=[0.25, 0.75])
0.75
>>> result = evaluate_bapps({("watson-dft", "rgb"): build_metric("watson-dft")}, "data/bapps")  # doctest: +SKIP
>>> result.scores[0]  # doctest: +SKIP
{'metric': 'human', 'colorspace': 'n/a', 'subset': 'traditional', 'score': ...}

Modules (every public name is importable from :mod:`percept.evaluate` itself):

- :mod:`percept.evaluate.scores`: the 2AFC score per triplet and per subset, the human ceiling, the JND mAP
  (VOC average precision);
- :mod:`percept.evaluate.harness`: a registry metric as the harness calls it (:class:`HarnessMetric`,
  :func:`build_metric`: RGB patches in [0, 1], grey by BT.601, similarities negated);
- :mod:`percept.evaluate.bapps`: distances over 2AFC / JND loaders, :func:`evaluate_bapps` over the val
  subsets, :func:`merge_rows` for result CSVs;
- :mod:`percept.evaluate.weights`: what tuning trains (linear layers, trunk) and the files the tuned
  parameters go to, in the original LossProvider's format;
- :mod:`percept.evaluate.tuning`: the heads (weighted sigmoid, LPIPS's ranked head), the families'
  schedules, :class:`TuneConfig` and :func:`tune_2afc` with checkpoints and resume.
"""

from percept.evaluate.bapps import (
    ALGORITHM_SUBSETS,
    COLORSPACES,
    DISTORTION_SUBSETS,
    BAPPSResult,
    evaluate_bapps,
    jnd_distances,
    merge_rows,
    twoafc_distances,
)
from percept.evaluate.harness import ELPIPS_SAMPLES, HarnessMetric, build_metric, metric_family, weight_options
from percept.evaluate.scores import human_agreement, jnd_map, jnd_precision_recall, twoafc_score, twoafc_scores, voc_ap
from percept.evaluate.tuning import (
    CHECKPOINT_FORMAT,
    FAMILY_BATCH,
    FAMILY_DEFAULTS,
    HEADS,
    TRUNK_FAMILIES,
    RankingHead,
    TuneConfig,
    WeightedSigmoidHead,
    build_tunable,
    lr_at_epoch,
    tune_2afc,
    tune_optimizer,
    tune_step,
)
from percept.evaluate.weights import (
    TUNE_MODES,
    clamp_lin_weights_,
    lin_layers,
    metric_trunk,
    trunk_state_dict,
    tuned_state_dict,
    tuned_trunk_file,
    tuned_weight_file,
    unfreeze_trunk_,
)

__all__ = [
    "DISTORTION_SUBSETS",
    "ALGORITHM_SUBSETS",
    "COLORSPACES",
    "twoafc_scores",
    "twoafc_score",
    "human_agreement",
    "voc_ap",
    "jnd_precision_recall",
    "jnd_map",
    "ELPIPS_SAMPLES",
    "metric_family",
    "tuned_weight_file",
    "tuned_trunk_file",
    "weight_options",
    "HarnessMetric",
    "build_metric",
    "twoafc_distances",
    "jnd_distances",
    "BAPPSResult",
    "evaluate_bapps",
    "merge_rows",
    "WeightedSigmoidHead",
    "RankingHead",
    "HEADS",
    "FAMILY_DEFAULTS",
    "FAMILY_BATCH",
    "TUNE_MODES",
    "TRUNK_FAMILIES",
    "lr_at_epoch",
    "lin_layers",
    "clamp_lin_weights_",
    "tuned_state_dict",
    "metric_trunk",
    "unfreeze_trunk_",
    "trunk_state_dict",
    "TuneConfig",
    "CHECKPOINT_FORMAT",
    "build_tunable",
    "tune_optimizer",
    "tune_step",
    "tune_2afc",
]
