"""Value checks of the backends' config dataclasses, so a bad ``--splat.*`` / ``--nerf.*`` value is one line
before any work instead of a traceback (or a silently broken model) minutes later.

The rules follow the fields' meaning from their names, so a new field is covered without a new rule:
counts, sizes, intervals and step numbers are whole numbers ``>= 0`` (those in :data:`AT_LEAST_ONE`
``>= 1``); every float is finite; learning rates, loss weights and regularisers are ``>= 0``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from featurefield.errors import FeatureFieldError

#: whole-number settings that must be at least 1 (a size or a period of 0 means nothing, or divides by 0)
AT_LEAST_ONE = {
    "embed_dim", "decoder_hidden", "feature_supersample", "refine_every", "reset_every", "sh_degree_interval",
    "schedule_steps", "init_points_random", "cpu_max_init", "num_levels", "features_per_level", "base_res", "max_res",
    "hidden_dim", "num_layers", "geo_feat_dim", "hidden_dim_color", "num_layers_color", "num_nerf_samples",
    "proposal_levels", "proposal_hidden_dim", "proposal_update_every", "proposal_anneal_steps", "feature_levels",
    "feature_features_per_level", "feature_base_res", "feature_max_res", "feature_hidden_dim", "feature_num_layers",
    "rays_per_batch", "render_chunk",
}
#: upper bounds where a larger value cannot work
AT_MOST = {"splat.sh_degree": 3}
_NON_NEGATIVE_FLOATS = ("lr", "weight", "lambda", "reg", "opacity", "grad2d", "eps", "plane", "scale", "threshold")


def flag(prefix: str, name: str) -> str:
    return f"--{prefix}.{name.replace('_', '-')}"


def check_config_values(cfg: Any, prefix: str) -> None:
    """Raise a one-line :class:`FeatureFieldError` for the first out-of-range value of dataclass ``cfg``.

    Args:
        cfg: a backend config dataclass (``SplatConfig``, ``NerfConfig``).
        prefix: its command-line prefix (``"splat"``, ``"nerf"``), used in the message.
    """
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        where = flag(prefix, f.name)
        if isinstance(value, bool) or value is None or isinstance(value, str):
            continue
        if isinstance(value, (tuple, list)):
            if any(not isinstance(v, int) or v < 1 for v in value):
                raise FeatureFieldError(f"{where} must be whole numbers >= 1, got {list(value)}")
            continue
        if isinstance(value, int):
            low = 1 if f.name in AT_LEAST_ONE else 0
            if value < low:
                raise FeatureFieldError(f"{where} must be at least {low}, got {value}")
            high = AT_MOST.get(f"{prefix}.{f.name}")
            if high is not None and value > high:
                raise FeatureFieldError(f"{where} must be at most {high}, got {value}")
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise FeatureFieldError(f"{where} must be a finite number, got {value}")
            if any(word in f.name for word in _NON_NEGATIVE_FLOATS) and value < 0:
                raise FeatureFieldError(f"{where} must be >= 0, got {value}")


def changed_rates(cfg: Any, prefix: str) -> list[str]:
    """Learning rates and loss weights of ``cfg`` raised above their defaults, largest factor first, as
    ``"--splat.lr-scales 1e+06 (default 0.005)"``: the likely cause when a training diverges."""
    out = []
    for f in dataclasses.fields(cfg):
        value, default = getattr(cfg, f.name), f.default
        if not isinstance(value, float) or not isinstance(default, float) or default <= 0:
            continue
        if ("lr" in f.name or "weight" in f.name) and value > default * 1.0001:
            out.append((value / default, f"{flag(prefix, f.name)} {value:g} (default {default:g})"))
    return [text for _, text in sorted(out, reverse=True)]
